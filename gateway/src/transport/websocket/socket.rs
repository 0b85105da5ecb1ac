//! A WebSocket over a byte stream, server side (RFC 6455 with
//! permessage-deflate, RFC 7692): reads client frames into whole messages,
//! writes server frames, and does the protocol's own chores (pongs, the
//! close handshake's echo).
//!
//! Reading: bytes go into a small buffer (256 bytes, grown for a large
//! frame and given back afterwards), each frame is checked as its header
//! arrives (reserved bits, opcodes, masking, control-frame rules, the size
//! limit) and handled once it is whole: control frames at once, data frames
//! into the message being assembled. Text is checked for UTF-8 frame by
//! frame, so a bad sequence fails at the frame that carries it. Compressed
//! messages are inflated when complete, stopping at the size limit.
//!
//! Writing: frames are appended to an output buffer and written out by
//! [`Socket::poll_flush`]; the buffer is given back once it is empty, so an
//! idle socket holds only its read buffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use pubsub_proto::close;
use tokio::io::{AsyncRead, AsyncWrite};

use super::deflate::Agreed;
use super::wire::{self, Header, opcode};
use crate::compression::{Deflater, InflateError};

/// Read buffer kept while idle (commands are small; a larger frame grows
/// it for as long as it takes).
const READ_BUFFER: usize = 256;
/// A grown read buffer is given back when idle above this.
const KEEP_READ_BUFFER: usize = 4096;
/// An output buffer is given back when empty above this.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;

/// What a connection negotiated for compression.
#[derive(Clone)]
pub struct Compression {
    pub agreed: Agreed,
    pub deflater: Arc<Deflater>,
}

/// A whole message (or control frame) from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    /// A ping (already answered with a pong) or a pong.
    Heartbeat,
    /// The client's close frame: its code, if it sent one. The echo is
    /// queued.
    Close(Option<u16>),
}

/// Why the socket cannot go on.
#[derive(Debug)]
pub enum SocketError {
    /// The client broke the protocol: close with this code and reason.
    Protocol(u16, &'static str),
    /// The connection failed or ended without a close frame.
    Io(io::Error),
}

impl SocketError {
    fn protocol(reason: &'static str) -> SocketError {
        SocketError::Protocol(close::PROTOCOL_ERROR, reason)
    }
}

/// A data message being assembled from fragments.
struct Partial {
    opcode: u8,
    compressed: bool,
    data: BytesMut,
    /// How many leading bytes of `data` are known to be valid UTF-8 (text,
    /// uncompressed only).
    checked: usize,
}

/// The server side of one WebSocket.
pub struct Socket<S> {
    io: S,
    inbuf: BytesMut,
    partial: Option<Partial>,
    out: Vec<u8>,
    written: usize,
    max_message: usize,
    compression: Option<Compression>,
    /// The client's close frame has arrived: read nothing more.
    closed_by_client: bool,
    /// This side sent its close frame: the client's is not echoed.
    sent_close: bool,
}

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// A socket on an upgraded connection, refusing messages over
    /// `max_message` bytes (inflated) with 1009.
    pub fn new(io: S, max_message: usize, compression: Option<Compression>) -> Socket<S> {
        Socket {
            io,
            inbuf: BytesMut::with_capacity(READ_BUFFER),
            partial: None,
            out: Vec::new(),
            written: 0,
            max_message,
            compression,
            closed_by_client: false,
            sent_close: false,
        }
    }

    /// What the handshake agreed on for compression, if anything.
    pub fn compression(&self) -> Option<&Compression> {
        self.compression.as_ref()
    }

    /// The next message from the client. `Ready(Err)` ends the connection.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, SocketError>> {
        loop {
            if let Some(incoming) = self.parse()? {
                return Poll::Ready(Ok(incoming));
            }
            if self.closed_by_client {
                return Poll::Pending;
            }
            if self.inbuf.capacity() - self.inbuf.len() < 64 {
                self.inbuf.reserve(READ_BUFFER);
            }
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.inbuf
            ))
            .map_err(SocketError::Io)?;
            if read == 0 {
                return Poll::Ready(Err(SocketError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection without a close frame",
                ))));
            }
        }
    }

    /// Handles what the buffer holds: the next message if one is complete.
    fn parse(&mut self) -> Result<Option<Incoming>, SocketError> {
        while !self.closed_by_client {
            let rsv1_allowed = self.compression.is_some();
            let Some(header) =
                wire::parse_header(&self.inbuf, rsv1_allowed).map_err(|e| SocketError::protocol(e.0))?
            else {
                return Ok(None);
            };
            self.check(&header)?;
            let whole = header.size + header.len as usize;
            if self.inbuf.len() < whole {
                // Room for the rest of the frame at once.
                self.inbuf.reserve(whole - self.inbuf.len());
                return Ok(None);
            }
            self.inbuf.advance(header.size);
            let mut payload = self.inbuf.split_to(header.len as usize);
            wire::unmask(&mut payload, header.mask, 0);
            if self.inbuf.is_empty() && self.inbuf.capacity() > KEEP_READ_BUFFER {
                self.inbuf = BytesMut::with_capacity(READ_BUFFER);
            }
            if let Some(incoming) = self.on_frame(header, payload)? {
                return Ok(Some(incoming));
            }
        }
        Ok(None)
    }

    /// What the header says that must hold before its payload is read.
    fn check(&self, header: &Header) -> Result<(), SocketError> {
        let so_far = self.partial.as_ref().map_or(0, |p| p.data.len());
        if header.len > (self.max_message - so_far.min(self.max_message)) as u64 {
            return Err(SocketError::Protocol(
                close::MESSAGE_TOO_BIG,
                "message over the size limit",
            ));
        }
        match (header.opcode, &self.partial) {
            (opcode::CONTINUATION, None) => Err(SocketError::protocol("continuation without a message")),
            (opcode::CONTINUATION, Some(_)) if header.rsv1 => {
                Err(SocketError::protocol("RSV1 on a continuation frame"))
            }
            (opcode::TEXT | opcode::BINARY, Some(_)) => Err(SocketError::protocol(
                "a new message before the previous one ended",
            )),
            _ => Ok(()),
        }
    }

    fn on_frame(&mut self, header: Header, payload: BytesMut) -> Result<Option<Incoming>, SocketError> {
        match header.opcode {
            opcode::PING => {
                self.queue(opcode::PONG, false, &payload);
                Ok(Some(Incoming::Heartbeat))
            }
            opcode::PONG => Ok(Some(Incoming::Heartbeat)),
            opcode::CLOSE => self.on_close(&payload).map(Some),
            _ => {
                let partial = match self.partial.take() {
                    Some(mut partial) => {
                        partial.data.extend_from_slice(&payload);
                        partial
                    }
                    None => Partial {
                        opcode: header.opcode,
                        compressed: header.rsv1,
                        data: payload,
                        checked: 0,
                    },
                };
                self.on_data(partial, header.fin)
            }
        }
    }

    fn on_data(&mut self, mut partial: Partial, fin: bool) -> Result<Option<Incoming>, SocketError> {
        if partial.opcode == opcode::TEXT && !partial.compressed {
            partial.checked = check_utf8(&partial.data, partial.checked, fin)?;
        }
        if !fin {
            self.partial = Some(partial);
            return Ok(None);
        }
        let data = if partial.compressed {
            let compression = self
                .compression
                .as_ref()
                .ok_or_else(|| SocketError::protocol("compressed message without the extension"))?;
            let inflated = compression
                .deflater
                .inflate(&partial.data, self.max_message)
                .map_err(|error| match error {
                    InflateError::TooBig => {
                        SocketError::Protocol(close::MESSAGE_TOO_BIG, "message over the size limit")
                    }
                    InflateError::Corrupt => {
                        SocketError::Protocol(close::INVALID_PAYLOAD, "compressed data is corrupt")
                    }
                })?;
            if partial.opcode == opcode::TEXT {
                check_utf8(&inflated, 0, true)?;
            }
            Bytes::from(inflated)
        } else {
            partial.data.freeze()
        };
        Ok(Some(match partial.opcode {
            opcode::TEXT => Incoming::Text(data),
            _ => Incoming::Binary(data),
        }))
    }

    fn on_close(&mut self, payload: &[u8]) -> Result<Incoming, SocketError> {
        // Even a malformed close frame is the client's close: nothing more
        // is read, and nobody waits for another.
        self.closed_by_client = true;
        let code = match payload {
            [] => None,
            [_] => return Err(SocketError::protocol("a close frame with one byte of payload")),
            [high, low, reason @ ..] => {
                let code = u16::from_be_bytes([*high, *low]);
                if !wire::is_valid_close_code(code) {
                    return Err(SocketError::protocol("invalid close code"));
                }
                if std::str::from_utf8(reason).is_err() {
                    return Err(SocketError::Protocol(
                        close::INVALID_PAYLOAD,
                        "close reason is not valid UTF-8",
                    ));
                }
                Some(code)
            }
        };
        if !self.sent_close {
            // The echo (RFC 6455 section 5.5.1): the same code, no reason.
            let echo = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
            self.queue(opcode::CLOSE, false, &echo);
            self.sent_close = true;
        }
        Ok(Incoming::Close(code))
    }

    /// Appends one frame to the output (written by [`Socket::poll_flush`]).
    fn queue(&mut self, opcode: u8, rsv1: bool, payload: &[u8]) {
        wire::write_header(&mut self.out, opcode, rsv1, payload.len());
        self.out.extend_from_slice(payload);
    }

    /// Appends a text (JSON) or binary (protobuf) message, compressed when
    /// the connection negotiated compression, the payload has at least
    /// `min_size` bytes and compressing makes it smaller. Returns the
    /// compressed size when it was sent compressed.
    pub fn queue_data(&mut self, text: bool, payload: &[u8], min_size: usize) -> Option<usize> {
        let opcode = if text { opcode::TEXT } else { opcode::BINARY };
        let compressed = match &self.compression {
            Some(c) if payload.len() >= min_size => c.deflater.compress(payload, c.agreed.server_window_bits),
            _ => None,
        };
        match compressed {
            Some(compressed) => {
                self.queue(opcode, true, &compressed);
                Some(compressed.len())
            }
            None => {
                self.queue(opcode, false, payload);
                None
            }
        }
    }

    /// Appends an already compressed message (compressed once for many
    /// connections; only valid when the connection negotiated compression
    /// with the same window).
    pub fn queue_compressed(&mut self, text: bool, compressed: &[u8]) {
        let opcode = if text { opcode::TEXT } else { opcode::BINARY };
        self.queue(opcode, true, compressed);
    }

    /// Appends an uncompressed message.
    pub fn queue_plain(&mut self, text: bool, payload: &[u8]) {
        let opcode = if text { opcode::TEXT } else { opcode::BINARY };
        self.queue(opcode, false, payload);
    }

    /// Appends a ping.
    pub fn queue_ping(&mut self) {
        self.queue(opcode::PING, false, &[]);
    }

    /// Appends a close frame with `code` and `reason` (cut to fit 123 bytes
    /// at a character boundary).
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.queue(opcode::CLOSE, false, &payload);
        self.sent_close = true;
    }

    /// Bytes queued and not yet written.
    pub fn buffered(&self) -> usize {
        self.out.len() - self.written
    }

    /// Writes everything queued, then flushes the stream.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.out.capacity() > KEEP_WRITE_BUFFER {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        self.written = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Flushes, then shuts the stream down (the server closes the TCP
    /// connection first, RFC 6455 section 7.1.1).
    pub fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_flush(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    /// True once the client's close frame arrived.
    pub fn closed_by_client(&self) -> bool {
        self.closed_by_client
    }
}

/// Checks that `data` is UTF-8 from `from` on, and returns how much of it
/// is: a sequence cut at the end of an unfinished message may continue in
/// the next frame; anything else invalid closes with 1007 at once.
fn check_utf8(data: &[u8], from: usize, fin: bool) -> Result<usize, SocketError> {
    match std::str::from_utf8(&data[from..]) {
        Ok(_) => Ok(data.len()),
        Err(error) if error.error_len().is_none() && !fin => Ok(from + error.valid_up_to()),
        Err(_) => Err(SocketError::Protocol(
            close::INVALID_PAYLOAD,
            "text is not valid UTF-8",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9u8, 8, 7, 6];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn read(socket: &mut Socket<tokio::io::DuplexStream>) -> Result<Incoming, SocketError> {
        std::future::poll_fn(|cx| socket.poll_read(cx)).await
    }

    fn pair(compression: Option<Compression>) -> (Socket<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1 << 20);
        (Socket::new(server, 1000, compression), client)
    }

    #[tokio::test]
    async fn fragments_become_one_message_and_pings_are_answered_between_them() {
        let (mut socket, mut client) = pair(None);
        let mut bytes = masked(0x01, "héllo ".as_bytes());
        bytes.extend(masked(0x89, b"p"));
        bytes.extend(masked(0x80, "wörld".as_bytes()));
        // A two-byte character cut across frames is fine.
        let snowman = "☃".as_bytes();
        bytes.extend(masked(0x01, &snowman[..1]));
        bytes.extend(masked(0x80, &snowman[1..]));
        client.write_all(&bytes).await.unwrap();
        assert_eq!(read(&mut socket).await.unwrap(), Incoming::Heartbeat);
        assert_eq!(
            read(&mut socket).await.unwrap(),
            Incoming::Text(Bytes::from("héllo wörld"))
        );
        assert_eq!(read(&mut socket).await.unwrap(), Incoming::Text(Bytes::from("☃")));
        std::future::poll_fn(|cx| socket.poll_flush(cx)).await.unwrap();
        let mut pong = [0u8; 3];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8A, 1, b'p']);
    }

    #[tokio::test]
    async fn protocol_violations_have_their_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (masked(0x81, &[0xFF, 0xFE]), close::INVALID_PAYLOAD),
            (masked(0x01, &[b'a', 0xC0]), close::INVALID_PAYLOAD),
            (masked(0x80, b"x"), close::PROTOCOL_ERROR),
            (
                [masked(0x01, b"a"), masked(0x81, b"b")].concat(),
                close::PROTOCOL_ERROR,
            ),
            (masked(0x88, &[0x03]), close::PROTOCOL_ERROR),
            (masked(0x88, &[0x03, 0xED]), close::PROTOCOL_ERROR),
            (masked(0x88, &[0x03, 0xE8, 0xFF]), close::INVALID_PAYLOAD),
            (masked(0xC1, b"x"), close::PROTOCOL_ERROR),
            (masked(0x82, &[0u8; 1001]), close::MESSAGE_TOO_BIG),
            (
                [masked(0x02, &[0u8; 600]), masked(0x80, &[0u8; 600])].concat(),
                close::MESSAGE_TOO_BIG,
            ),
        ];
        for (bytes, code) in cases {
            let (mut socket, mut client) = pair(None);
            client.write_all(&bytes).await.unwrap();
            match read(&mut socket).await {
                Err(SocketError::Protocol(got, _)) => assert_eq!(got, code, "{bytes:?}"),
                other => panic!("{bytes:?}: expected close {code}, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn compressed_messages_inflate_within_the_limit() {
        let deflater = Deflater::new(6, metrics::Counter::noop());
        let compression = Compression {
            agreed: Agreed {
                server_window_bits: 15,
            },
            deflater: deflater.clone(),
        };
        let text = "compress me ".repeat(20);
        let compressed = deflater.compress(text.as_bytes(), 15).unwrap();
        let (mut socket, mut client) = pair(Some(compression.clone()));
        client.write_all(&masked(0xC1, &compressed)).await.unwrap();
        assert_eq!(
            read(&mut socket).await.unwrap(),
            Incoming::Text(Bytes::from(text))
        );

        let bomb = deflater.compress(&[b'a'; 5000], 15).unwrap();
        let (mut socket, mut client) = pair(Some(compression.clone()));
        client.write_all(&masked(0xC2, &bomb)).await.unwrap();
        assert!(matches!(
            read(&mut socket).await,
            Err(SocketError::Protocol(1009, _))
        ));

        let (mut socket, mut client) = pair(Some(compression));
        client.write_all(&masked(0xC2, &[0xFF; 20])).await.unwrap();
        assert!(matches!(
            read(&mut socket).await,
            Err(SocketError::Protocol(1007, _))
        ));
    }

    #[tokio::test]
    async fn a_close_is_echoed_with_its_code() {
        let (mut socket, mut client) = pair(None);
        client
            .write_all(&masked(0x88, &[0x03, 0xE8, b'b', b'y', b'e']))
            .await
            .unwrap();
        assert_eq!(read(&mut socket).await.unwrap(), Incoming::Close(Some(1000)));
        std::future::poll_fn(|cx| socket.poll_shutdown(cx)).await.unwrap();
        let mut echo = Vec::new();
        client.read_to_end(&mut echo).await.unwrap();
        assert_eq!(echo, [0x88, 2, 0x03, 0xE8]);
    }
}
