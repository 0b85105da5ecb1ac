//! Streaming HTTP clients: `GET /sse` (Server-Sent Events) and `GET /stream`
//! (HTTP streaming, one JSON message per line), each a real HTTP/1.1
//! request over the same sockets as the WebSocket clients (source address,
//! TLS), the chunked response decoded and cut into events or lines as they
//! arrive. Only what the generator needs is parsed: each message goes to
//! [`wire::parse_json`], so probes are read the same way over every
//! transport.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::clients::Io;
use crate::wire::{self, Frame};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// How a stream's body is cut into messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// SSE events (`data:` lines, a blank line after each).
    Events,
    /// One JSON message per line.
    Lines,
}

/// One open `GET /sse` or `GET /stream` stream.
pub struct SseStream {
    io: Io,
    framing: Framing,
    /// Bytes read and not yet decoded from the chunked body.
    raw: BytesMut,
    /// Decoded body bytes not yet cut into events.
    text: BytesMut,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    ended: bool,
}

impl SseStream {
    /// Sends `GET <target>` (a path and query, with `authorization`, if
    /// given) and reads the response head: 200 or an error.
    pub async fn open(
        mut io: Io,
        host: &str,
        target: &str,
        authorization: Option<&str>,
        framing: Framing,
    ) -> anyhow::Result<SseStream> {
        let path = target.split('?').next().unwrap_or(target).to_owned();
        let mut request = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\n");
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
            framing,
            raw,
            text: BytesMut::new(),
            chunk_left: 0,
            ended: false,
        })
    }

    /// The next message's frame; [`Frame::Closed`] when the stream ended
    /// (including its close event or line).
    pub async fn next(&mut self) -> Frame {
        loop {
            let Some(message) = self.next_message().await else {
                return Frame::Closed;
            };
            let frame = match self.framing {
                Framing::Events => frame_of(&message),
                Framing::Lines => line_frame(&message),
            };
            if let Some(frame) = frame {
                return frame;
            }
        }
    }

    /// The next event or line as it came; `None` when the stream ended.
    pub async fn next_message(&mut self) -> Option<BytesMut> {
        let end: &[u8] = match self.framing {
            Framing::Events => b"\n\n",
            Framing::Lines => b"\n",
        };
        loop {
            if let Some(at) = memchr::memmem::find(&self.text, end) {
                return Some(self.text.split_to(at + end.len()));
            }
            if self.ended {
                return None;
            }
            match self.decode() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(_) => return None,
            }
            match self.io.read_buf(&mut self.raw).await {
                Ok(0) | Err(_) => return None,
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

/// The session id of a `GET /stream` stream's first line.
pub fn session_of(line: &[u8]) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct Session {
        #[serde(rename = "type")]
        kind: String,
        session: String,
    }
    let first: Session = serde_json::from_slice(line)
        .map_err(|e| anyhow::anyhow!("the stream's first line is not its session ({e})"))?;
    anyhow::ensure!(
        first.kind == "session",
        "the stream's first line is not its session"
    );
    Ok(first.session)
}

/// `POST /stream/commands?session=<session>` with `commands` (one per
/// line) on `io`, a connection of its own (closed after the answer);
/// fails unless the session took them (202).
pub async fn post_commands(mut io: Io, host: &str, session: &str, commands: &str) -> anyhow::Result<()> {
    let session: String = form_urlencoded::byte_serialize(session.as_bytes()).collect();
    let request = format!(
        "POST /stream/commands?session={session} HTTP/1.1\r\nhost: {host}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{commands}",
        commands.len()
    );
    io.write_all(request.as_bytes()).await?;
    let mut answer = BytesMut::with_capacity(512);
    while memchr::memmem::find(&answer, b"\r\n\r\n").is_none() {
        anyhow::ensure!(answer.len() < MAX_HEAD, "answer head too large");
        if io.read_buf(&mut answer).await? == 0 {
            break;
        }
    }
    let status =
        String::from_utf8_lossy(answer[..].split(|b| *b == b'\r').next().unwrap_or(b"")).into_owned();
    anyhow::ensure!(
        status.starts_with("HTTP/1.1 202"),
        "POST /stream/commands refused: {status}"
    );
    Ok(())
}

/// The frame a line of `GET /stream` carries; `None` for heartbeats.
fn line_frame(line: &[u8]) -> Option<Frame> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    if line.is_empty() || line == r#"{"type":"ping"}"# {
        return None;
    }
    if line.starts_with(r#"{"type":"close""#) {
        return Some(Frame::Closed);
    }
    Some(wire::parse_json(line))
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
        assert!(line_frame(b"{\"type\":\"ping\"}\n").is_none());
        assert!(matches!(
            line_frame(b"{\"type\":\"close\",\"code\":1012}\n"),
            Some(Frame::Closed)
        ));
        assert!(matches!(
            line_frame(b"{\"type\":\"subscribed\",\"channel\":\"a\"}\n"),
            Some(Frame::Subscribed)
        ));
        assert!(matches!(
            frame_of(b"event: close\ndata: {}\n\n"),
            Some(Frame::Closed)
        ));
    }
}
