//! A WebSocket client (RFC 6455) that can negotiate permessage-deflate
//! (RFC 7692), for the load generator and the gateway's tests:
//! tungstenite, the client they otherwise use, has no permessage-deflate.
//!
//! It is a `Stream` of tungstenite `Message`s and a `Sink` of them, so it
//! drops in where `tokio_tungstenite::WebSocketStream` was. What it does:
//! the opening handshake with an optional `Sec-WebSocket-Extensions` offer,
//! masked client frames (compressed when negotiated and large enough),
//! reassembly of fragmented server messages, inflating compressed ones,
//! answering pings, and the close handshake. Inflating keeps no state
//! between messages when the server said `server_no_context_takeover` (the
//! gateway always does): one decompressor per thread serves every client,
//! so tens of thousands of clients in one process stay small.
//!
//! For hostile-input tests, [`WebSocket::send_raw`] writes any frame bytes.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures_util::{Sink, Stream};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// What the client offers by default: what browsers send.
pub const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];
/// Largest response head read during the handshake.
const MAX_HEAD: usize = 16 * 1024;

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The server answered the upgrade with something other than 101.
    #[error("HTTP {status} instead of an upgrade: {body}")]
    Http { status: u16, body: String },
    #[error("bad handshake: {0}")]
    Handshake(String),
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The `Sec-WebSocket-Extensions` offer, if any (such as
    /// [`BROWSER_OFFER`]).
    pub offer: Option<String>,
    /// Messages this large or larger are sent compressed when the
    /// extension was negotiated (`None`: never compress).
    pub compress_from: Option<usize>,
}

/// What the server agreed to, from its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The whole `Sec-WebSocket-Extensions` response.
    pub response: String,
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
}

/// A client WebSocket over `S`.
pub struct WebSocket<S> {
    io: S,
    inbuf: BytesMut,
    out: Vec<u8>,
    written: usize,
    negotiated: Option<Negotiated>,
    compress_from: Option<usize>,
    /// The client's compressor when it must keep its window
    /// (`client_no_context_takeover` not agreed).
    compressor: Option<Compress>,
    /// The server's window when it keeps one (context takeover).
    decompressor: Option<Decompress>,
    partial: Option<(u8, bool, BytesMut)>,
    close_sent: bool,
    close_received: bool,
    /// Compressed payload bytes received, and what they inflated to.
    pub compressed_in: u64,
    pub inflated_in: u64,
}

/// Connects: sends the upgrade request for `url` (`ws://host:port/path`)
/// with `headers` over `io`, and checks the answer.
pub async fn connect<S>(
    mut io: S,
    url: &str,
    headers: &[(&str, &str)],
    options: Options,
) -> Result<(WebSocket<S>, Vec<(String, String)>), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (host, path) = url
        .split_once("://")
        .map(|(_, rest)| {
            rest.split_once('/')
                .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")))
        })
        .ok_or_else(|| Error::Handshake(format!("not a ws:// URL: {url}")))?;
    let key_bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(offer) = &options.offer {
        request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    // The response head, and whatever frames came with it.
    let mut inbuf = BytesMut::with_capacity(4096);
    let head_end = loop {
        if let Some(at) = inbuf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if inbuf.len() > MAX_HEAD {
            return Err(Error::Handshake("response head too long".into()));
        }
        if io.read_buf(&mut inbuf).await? == 0 {
            return Err(Error::Handshake("connection closed during the handshake".into()));
        }
    };
    let head = String::from_utf8_lossy(&inbuf[..head_end]).into_owned();
    inbuf.advance(head_end);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| Error::Handshake("no status line".into()))?;
    let response_headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let header = |name: &str| {
        response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if status != 101 {
        let length: usize = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        while inbuf.len() < length.min(MAX_HEAD) {
            if io.read_buf(&mut inbuf).await? == 0 {
                break;
            }
        }
        return Err(Error::Http {
            status,
            body: String::from_utf8_lossy(&inbuf).into_owned(),
        });
    }
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let expected = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    if header("sec-websocket-accept") != Some(expected.as_str()) {
        return Err(Error::Handshake("wrong Sec-WebSocket-Accept".into()));
    }
    let negotiated = match header("sec-websocket-extensions") {
        None => None,
        Some(response) if options.offer.is_some() && response.starts_with("permessage-deflate") => {
            let params: Vec<&str> = response.split(';').map(str::trim).collect();
            Some(Negotiated {
                response: response.to_string(),
                server_no_context_takeover: params.contains(&"server_no_context_takeover"),
                client_no_context_takeover: params.contains(&"client_no_context_takeover"),
            })
        }
        Some(other) => return Err(Error::Handshake(format!("unexpected extensions {other:?}"))),
    };
    let compressor = negotiated
        .as_ref()
        .filter(|n| !n.client_no_context_takeover)
        .map(|_| Compress::new(Compression::default(), false));
    let decompressor = negotiated
        .as_ref()
        .filter(|n| !n.server_no_context_takeover)
        .map(|_| Decompress::new(false));
    let ws = WebSocket {
        io,
        inbuf,
        out: Vec::new(),
        written: 0,
        negotiated,
        compress_from: options.compress_from,
        compressor,
        decompressor,
        partial: None,
        close_sent: false,
        close_received: false,
        compressed_in: 0,
        inflated_in: 0,
    };
    Ok((ws, response_headers))
}

/// Messages inflated recently on this thread, kept for reuse.
const INFLATED_CACHE: usize = 32;

thread_local! {
    /// One decompressor per thread for servers without context takeover.
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
    /// Without context takeover, the same compressed bytes always inflate
    /// to the same message, and a fan-out sends the same bytes to every
    /// subscriber: the last few results are reused by the thread's other
    /// clients (a load generator with thousands of subscribers would
    /// otherwise spend more CPU inflating than the server compressing).
    static INFLATED: RefCell<Vec<(Bytes, Bytes)>> = const { RefCell::new(Vec::new()) };
    static DEFLATER: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
}

fn inflate_with(decompressor: &mut Decompress, data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(data.len() * 4 + 64);
    for input in [data, &TAIL[..]] {
        let start = decompressor.total_in();
        loop {
            let consumed = (decompressor.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let status = decompressor
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| Error::Protocol("corrupt compressed data from the server"))?;
            let consumed = (decompressor.total_in() - start) as usize;
            if status == flate2::Status::StreamEnd || (consumed == input.len() && out.len() < out.capacity())
            {
                break;
            }
        }
    }
    Ok(out)
}

/// Inflates a message compressed without context, reusing what this
/// thread inflated recently.
fn inflate_shared(data: &Bytes) -> Result<Bytes, Error> {
    let cached = INFLATED.with(|cache| {
        let cache = cache.borrow();
        cache
            .iter()
            .find(|(key, _)| key == data)
            .map(|(_, value)| value.clone())
    });
    if let Some(inflated) = cached {
        return Ok(inflated);
    }
    let inflated = INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        inflate_with(&mut d, data)
    })?;
    let inflated = Bytes::from(inflated);
    INFLATED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() == INFLATED_CACHE {
            cache.remove(0);
        }
        cache.push((data.clone(), inflated.clone()));
    });
    Ok(inflated)
}

fn deflate_with(compressor: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let start = compressor.total_in();
    loop {
        let consumed = (compressor.total_in() - start) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        if compressor
            .compress_vec(&data[consumed..], &mut out, FlushCompress::Sync)
            .is_err()
        {
            break;
        }
        let consumed = (compressor.total_in() - start) as usize;
        if consumed == data.len() && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

/// A masked client frame.
pub fn masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = std::array::from_fn(|_| fastrand::u8(..));
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first_byte);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

impl<S> WebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// What the server agreed to for compression, if anything.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Compresses `data` as one message, as this client must.
    pub fn deflate(&mut self, data: &[u8]) -> Vec<u8> {
        match &mut self.compressor {
            Some(compressor) => deflate_with(compressor, data),
            None => DEFLATER.with(|d| {
                let mut d = d.borrow_mut();
                d.reset();
                deflate_with(&mut d, data)
            }),
        }
    }

    /// Writes `bytes` as they are (any frame, for hostile-input tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    fn queue_message(&mut self, message: Message) {
        let (opcode, payload): (u8, Bytes) = match message {
            Message::Text(text) => (0x1, text.into()),
            Message::Binary(bytes) => (0x2, bytes),
            Message::Ping(bytes) => (0x9, bytes),
            Message::Pong(bytes) => (0xA, bytes),
            Message::Close(frame) => {
                self.close_sent = true;
                let payload = frame
                    .map(|f| {
                        let mut p = u16::from(f.code).to_be_bytes().to_vec();
                        p.extend_from_slice(f.reason.as_bytes());
                        p
                    })
                    .unwrap_or_default();
                (0x8, Bytes::from(payload))
            }
            Message::Frame(_) => return,
        };
        let compress = opcode < 0x8
            && self.negotiated.is_some()
            && self.compress_from.is_some_and(|from| payload.len() >= from);
        if compress {
            let compressed = self.deflate(&payload);
            self.out.extend(masked_frame(0xC0 | opcode, &compressed));
        } else {
            self.out.extend(masked_frame(0x80 | opcode, &payload));
        }
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Parses one whole server frame from the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Message>, Error> {
        loop {
            let buf = &self.inbuf[..];
            let [first, second, ..] = *buf else {
                return Ok(None);
            };
            if second & 0x80 != 0 {
                return Err(Error::Protocol("a masked server frame"));
            }
            let (len, at) = match second & 0x7F {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(be) as usize, 10)
                }
                126 | 127 => return Ok(None),
                n => (usize::from(n), 2),
            };
            if buf.len() < at + len {
                self.inbuf.reserve(at + len - buf.len());
                return Ok(None);
            }
            let (fin, rsv1, opcode) = (first & 0x80 != 0, first & 0x40 != 0, first & 0x0F);
            self.inbuf.advance(at);
            let payload = self.inbuf.split_to(len);
            match opcode {
                0x9 => {
                    let payload = payload.freeze();
                    self.queue_message(Message::Pong(payload.clone()));
                    return Ok(Some(Message::Ping(payload)));
                }
                0xA => return Ok(Some(Message::Pong(payload.freeze()))),
                0x8 => {
                    self.close_received = true;
                    let frame = (payload.len() >= 2).then(|| CloseFrame {
                        code: CloseCode::from(u16::from_be_bytes([payload[0], payload[1]])),
                        reason: Utf8Bytes::from(String::from_utf8_lossy(&payload[2..]).into_owned()),
                    });
                    if !self.close_sent {
                        self.queue_message(Message::Close(frame.clone()));
                    }
                    return Ok(Some(Message::Close(frame)));
                }
                0x0 => match &mut self.partial {
                    Some((_, _, data)) => data.extend_from_slice(&payload),
                    None => return Err(Error::Protocol("continuation without a message")),
                },
                0x1 | 0x2 => self.partial = Some((opcode, rsv1, payload)),
                _ => return Err(Error::Protocol("unknown opcode from the server")),
            }
            if !fin {
                continue;
            }
            let Some((opcode, compressed, data)) = self.partial.take() else {
                continue;
            };
            let data = if compressed {
                if self.negotiated.is_none() {
                    return Err(Error::Protocol("a compressed frame without the extension"));
                }
                let data = data.freeze();
                let inflated = match &mut self.decompressor {
                    Some(decompressor) => Bytes::from(inflate_with(decompressor, &data)?),
                    None => inflate_shared(&data)?,
                };
                self.compressed_in += data.len() as u64;
                self.inflated_in += inflated.len() as u64;
                inflated
            } else {
                data.freeze()
            };
            return Ok(Some(if opcode == 0x1 {
                Message::Text(
                    Utf8Bytes::try_from(data).map_err(|_| Error::Protocol("text that is not UTF-8"))?,
                )
            } else {
                Message::Binary(data)
            }));
        }
    }

    /// Sends a close frame (if not sent yet), flushes and shuts down.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        if !self.close_sent {
            self.queue_message(Message::Close(frame));
        }
        std::future::poll_fn(|cx| self.poll_write_out(cx)).await?;
        self.io.shutdown().await?;
        Ok(())
    }
}

impl<S> Stream for WebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // Pongs and close echoes go out as soon as they are queued.
            if !this.out.is_empty() && this.poll_write_out(cx).is_ready() {
                this.out.clear();
                this.written = 0;
            }
            match this.parse() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
            if this.close_received {
                return Poll::Ready(None);
            }
            if this.inbuf.capacity() - this.inbuf.len() < 1024 {
                this.inbuf.reserve(4096);
            }
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.io),
                cx,
                &mut this.inbuf
            )) {
                Ok(0) => return Poll::Ready(None),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(error.into()))),
            }
        }
    }
}

impl<S> Sink<Message> for WebSocket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.out.len() > 64 * 1024 {
            ready!(this.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Error> {
        self.get_mut().queue_message(message);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_write_out(cx).map_err(Error::from)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.queue_message(Message::Close(None));
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx).map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_round_trips_without_context() {
        let text = b"hello hello hello hello hello hello".repeat(4);
        let mut d = Compress::new(Compression::default(), false);
        let compressed = deflate_with(&mut d, &text);
        assert!(compressed.len() < text.len());
        let mut i = Decompress::new(false);
        assert_eq!(inflate_with(&mut i, &compressed).unwrap(), text);
    }
}
