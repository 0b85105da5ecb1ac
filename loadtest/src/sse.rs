//! Server-Sent Events clients for `GET /sse`: a real HTTP/1.1 request over
//! the same sockets as the WebSocket clients (source address, TLS), the
//! chunked response decoded and cut into events as they arrive. Only what
//! the generator needs is parsed: each event's `data` goes to
//! [`wire::parse_json`], so probes are read the same way over both
//! transports.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clients::Io;
use crate::wire::{self, Frame};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// One open `GET /sse` stream.
pub struct SseStream {
    io: Io,
    /// Bytes read and not yet decoded from the chunked body.
    raw: BytesMut,
    /// Decoded body bytes not yet cut into events.
    text: BytesMut,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    ended: bool,
}

impl SseStream {
    /// Sends `GET <path>?channel=<channel>` (with `authorization`, if
    /// given) and reads the response head: 200 or an error.
    pub async fn open(
        mut io: Io,
        host: &str,
        path: &str,
        channel: &str,
        authorization: Option<&str>,
    ) -> anyhow::Result<SseStream> {
        let channel: String = form_urlencoded::byte_serialize(channel.as_bytes()).collect();
        let mut request =
            format!("GET {path}?channel={channel} HTTP/1.1\r\nhost: {host}\r\naccept: text/event-stream\r\n");
        if let Some(authorization) = authorization {
            request.push_str(&format!("authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        io.write_all(request.as_bytes()).await?;
        let mut raw = BytesMut::with_capacity(4096);
        let head_end = loop {
            if let Some(at) = memchr::memmem::find(&raw, b"\r\n\r\n") {
                break at + 4;
            }
            anyhow::ensure!(raw.len() < MAX_HEAD, "response head too large");
            if io.read_buf(&mut raw).await? == 0 {
                anyhow::bail!("connection closed before the response head");
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 200") {
            let status = head.lines().next().unwrap_or("").to_owned();
            anyhow::bail!("GET {path} refused: {status}");
        }
        anyhow::ensure!(
            head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
            "expected a chunked event stream"
        );
        raw.advance(head_end);
        Ok(SseStream {
            io,
            raw,
            text: BytesMut::new(),
            chunk_left: 0,
            ended: false,
        })
    }

    /// The next event's frame; [`Frame::Closed`] when the stream ended
    /// (including its `event: close`).
    pub async fn next(&mut self) -> Frame {
        loop {
            if let Some(at) = memchr::memmem::find(&self.text, b"\n\n") {
                let event = self.text.split_to(at + 2);
                if let Some(frame) = frame_of(&event) {
                    return frame;
                }
                continue;
            }
            if self.ended {
                return Frame::Closed;
            }
            match self.decode() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(_) => return Frame::Closed,
            }
            match self.io.read_buf(&mut self.raw).await {
                Ok(0) | Err(_) => return Frame::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Moves what the chunked encoding carries from `raw` to `text`; true
    /// when something moved.
    fn decode(&mut self) -> anyhow::Result<bool> {
        let mut moved = false;
        loop {
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(self.raw.len());
                if take == 0 {
                    return Ok(moved);
                }
                self.text.extend_from_slice(&self.raw.split_to(take));
                self.chunk_left -= take;
                moved = true;
                continue;
            }
            // A chunk's size line, after the previous chunk's CRLF.
            let data = &self.raw[..];
            let start = if data.starts_with(b"\r\n") { 2 } else { 0 };
            let Some(end) = memchr::memmem::find(&data[start..], b"\r\n") else {
                return Ok(moved);
            };
            let line = std::str::from_utf8(&data[start..start + end])?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)?;
            self.raw.advance(start + end + 2);
            if size == 0 {
                self.ended = true;
                return Ok(true);
            }
            self.chunk_left = size;
        }
    }
}

/// The frame an event carries; `None` for comments (heartbeats).
fn frame_of(event: &[u8]) -> Option<Frame> {
    let text = std::str::from_utf8(event).ok()?;
    let mut data = String::new();
    for line in text.lines() {
        if line == "event: close" {
            return Some(Frame::Closed);
        }
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(wire::parse_json(&data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_frames() {
        assert!(matches!(
            frame_of(b"data: {\"type\":\"subscribed\",\"channel\":\"a\"}\n\n"),
            Some(Frame::Subscribed)
        ));
        assert!(matches!(
            frame_of(
                b"id: e:1\ndata: {\"type\":\"message\",\"channel\":\"a\",\"data\":{\"seq\":4,\"t\":99}}\n\n"
            ),
            Some(Frame::Probe {
                seq: 4,
                sent_micros: 99
            })
        ));
        assert!(frame_of(b": ping\n\n").is_none());
        assert!(matches!(
            frame_of(b"event: close\ndata: {}\n\n"),
            Some(Frame::Closed)
        ));
    }
}
