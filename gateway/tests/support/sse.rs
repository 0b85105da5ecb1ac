//! A real Server-Sent Events client (hyper's HTTP client reading the
//! stream as it arrives), parsing events the way `EventSource` does.

use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::WAIT;

/// One event of the stream.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }
}

pub struct SseClient {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    body: Incoming,
    buffer: String,
    /// The last id seen (what EventSource sends back as Last-Event-ID).
    pub last_id: Option<String>,
    /// Comments (heartbeats) seen.
    pub comments: usize,
}

impl SseClient {
    /// `GET path` with `headers`; the stream is read as events arrive.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let response = super::request(addr, http::Method::GET, path, headers, Bytes::new()).await;
        let status = response.status();
        let headers = response.headers().clone();
        SseClient {
            status,
            headers,
            body: response.into_body(),
            buffer: String::new(),
            last_id: None,
            comments: 0,
        }
    }

    /// The rest of the body as text (for refusals).
    pub async fn text(self) -> String {
        let bytes = self.body.collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The next event (comments are counted and skipped); `None` when the
    /// stream ended.
    pub async fn next(&mut self) -> Option<Event> {
        tokio::time::timeout(WAIT, self.next_unbounded())
            .await
            .expect("an event within the wait")
    }

    async fn next_unbounded(&mut self) -> Option<Event> {
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..at + 2).collect();
                let mut event = Event::default();
                let mut data: Vec<&str> = Vec::new();
                let mut fields = 0;
                for line in block.lines() {
                    if line.is_empty() || line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    fields += 1;
                    match field {
                        "id" => event.id = Some(value.to_string()),
                        "event" => event.event = Some(value.to_string()),
                        "data" => data.push(value),
                        "retry" => event.retry = value.parse().ok(),
                        _ => {}
                    }
                }
                if fields == 0 {
                    self.comments += 1;
                    continue;
                }
                event.data = data.join("\n");
                if event.id.is_some() {
                    self.last_id = event.id.clone();
                }
                return Some(event);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer
                            .push_str(std::str::from_utf8(&data).expect("UTF-8 stream"));
                    }
                }
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next event that is not a `subscribed` reply.
    pub async fn next_message(&mut self) -> Value {
        loop {
            let event = self.next().await.expect("the stream goes on");
            let value = event.json();
            if value["type"] != "subscribed" {
                return value;
            }
        }
    }
}
