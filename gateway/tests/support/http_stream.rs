//! A real HTTP-streaming client: `GET /stream` read line by line as it
//! arrives (hyper's HTTP client), commands sent as `POST /stream/commands`
//! to whichever node the test names.

use std::net::SocketAddr;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::{HttpAnswer, WAIT, http};

pub struct StreamClient {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    /// The session id of the stream's first line.
    pub session: String,
    body: Incoming,
    buffer: Vec<u8>,
    /// Heartbeat lines seen.
    pub pings: usize,
}

impl StreamClient {
    /// `GET /stream` on `addr` with `headers`; reads the session line.
    pub async fn open(addr: SocketAddr, headers: &[(&str, &str)]) -> StreamClient {
        let response = super::request(addr, Method::GET, "/stream", headers, bytes::Bytes::new()).await;
        let mut client = StreamClient {
            status: response.status(),
            headers: response.headers().clone(),
            session: String::new(),
            body: response.into_body(),
            buffer: Vec::new(),
            pings: 0,
        };
        assert_eq!(client.status, 200, "GET /stream");
        let first = client.next().await.expect("the session line");
        assert_eq!(first["type"], "session", "{first}");
        client.session = first["session"].as_str().expect("a session id").to_string();
        client
    }

    /// The next message (heartbeats are counted and skipped); `None` when
    /// the stream ended.
    pub async fn next(&mut self) -> Option<Value> {
        tokio::time::timeout(WAIT, self.next_unbounded())
            .await
            .expect("a line within the wait")
    }

    async fn next_unbounded(&mut self) -> Option<Value> {
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                let value: Value = serde_json::from_slice(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {}", String::from_utf8_lossy(&line)));
                if value["type"] == "ping" {
                    self.pings += 1;
                    continue;
                }
                return Some(value);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next message of `kind` (others are skipped).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let message = self.next().await.expect("the stream goes on");
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// POSTs `commands` (one per line) for this session to `addr`.
    pub async fn send(&self, addr: SocketAddr, commands: &[Value]) -> HttpAnswer {
        let body: String = commands.iter().map(|c| format!("{c}\n")).collect();
        post_commands(addr, &self.session, "application/x-ndjson", body).await
    }
}

/// `POST /stream/commands?session=...` with `body` as `content_type`.
pub async fn post_commands(addr: SocketAddr, session: &str, content_type: &str, body: String) -> HttpAnswer {
    let path = format!("/stream/commands?session={}", urlencode(session));
    http(addr, Method::POST, &path, &[("content-type", content_type)], body).await
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A protobuf session stream (`GET /stream?encoding=protobuf`): frames of a
/// kind byte, a big-endian u32 length and the bytes, read as they arrive;
/// commands POSTed as length-prefixed `ClientCommand`s.
pub struct ProtoStream {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    /// The session id of the `X-Stream-Session` header.
    pub session: String,
    body: Incoming,
    buffer: Vec<u8>,
}

/// Frame kinds of a protobuf session stream.
pub const FRAME_MESSAGE: u8 = 1;
pub const FRAME_CLOSE: u8 = 3;

impl ProtoStream {
    pub async fn open(addr: SocketAddr) -> ProtoStream {
        let response = super::request(
            addr,
            Method::GET,
            "/stream?encoding=protobuf",
            &[],
            bytes::Bytes::new(),
        )
        .await;
        let session = response.headers()["x-stream-session"]
            .to_str()
            .expect("a session id")
            .to_string();
        ProtoStream {
            status: response.status(),
            headers: response.headers().clone(),
            session,
            body: response.into_body(),
            buffer: Vec::new(),
        }
    }

    /// The next frame: its kind and payload.
    pub async fn next(&mut self) -> (u8, Vec<u8>) {
        tokio::time::timeout(WAIT, async {
            loop {
                if self.buffer.len() >= 5 {
                    let b = &self.buffer;
                    let length = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
                    if b.len() >= 5 + length {
                        let frame: Vec<u8> = self.buffer.drain(..5 + length).collect();
                        return (frame[0], frame[5..].to_vec());
                    }
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("the stream goes on")
                    .expect("a frame");
                if let Ok(data) = frame.into_data() {
                    self.buffer.extend_from_slice(&data);
                }
            }
        })
        .await
        .expect("a frame within the wait")
    }

    /// The next frame, which must be a `ServerMessage`.
    pub async fn next_message(&mut self) -> pubsub_proto::pb::ServerMessage {
        use prost::Message;
        let (kind, payload) = self.next().await;
        assert_eq!(kind, FRAME_MESSAGE, "a message frame");
        pubsub_proto::pb::ServerMessage::decode(&payload[..]).expect("a ServerMessage")
    }

    /// POSTs `commands` for this session to `addr`.
    pub async fn send(&self, addr: SocketAddr, commands: &[pubsub_proto::pb::ClientCommand]) -> HttpAnswer {
        use prost::Message;
        let mut body = Vec::new();
        for command in commands {
            let bytes = command.encode_to_vec();
            body.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            body.extend_from_slice(&bytes);
        }
        post_bytes(addr, &self.session, "application/x-protobuf", body).await
    }
}

/// `POST /stream/commands?session=...` with raw `body` bytes.
pub async fn post_bytes(addr: SocketAddr, session: &str, content_type: &str, body: Vec<u8>) -> HttpAnswer {
    let path = format!("/stream/commands?session={}", urlencode(session));
    http(addr, Method::POST, &path, &[("content-type", content_type)], body).await
}
