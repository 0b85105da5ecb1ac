//! A publisher of numbered payloads through the HTTP API or a WebSocket,
//! rotating to the next node when one stops answering, and recording the
//! outcome of every publication in the ledger.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{Ledger, Payload};

/// Where publications go.
#[derive(Debug, Clone)]
pub enum PublishVia {
    /// `POST /api/publish` on these base URLs (`http://host:port`).
    Http(Vec<String>),
    /// A WebSocket client on these URLs (`ws://host:port/ws`).
    WebSocket(Vec<String>),
}

/// How long a publication may take before its outcome counts as unknown.
const TIMEOUT: Duration = Duration::from_secs(3);

pub struct Publisher {
    pub(super) name: String,
    pub(super) via: PublishVia,
    pub(super) rate: u32,
    pub(super) channels: Vec<String>,
    pub(super) ledger: Arc<Mutex<Ledger>>,
    pub(super) stop: watch::Receiver<bool>,
}

/// What happened to one publication.
enum Outcome {
    Acked(Arc<str>, u64),
    Refused,
    Unknown,
}

impl Publisher {
    pub(super) async fn run(self) {
        let interval = Duration::from_secs_f64(1.0 / f64::from(self.rate.max(1)));
        let mut tick = tokio::time::interval(interval);
        let mut sender = Sender::new(self.via.clone());
        for seq in 0u64.. {
            tick.tick().await;
            if *self.stop.borrow() {
                return;
            }
            let channel = &self.channels[seq as usize % self.channels.len()];
            let payload = Payload {
                publisher: self.name.clone(),
                seq,
            };
            let data = json!({"pub": self.name, "seq": seq});
            let outcome = sender.publish(channel, data).await;
            let mut ledger = self.ledger.lock();
            match outcome {
                Outcome::Acked(epoch, offset) => {
                    ledger
                        .acked
                        .entry(channel.clone())
                        .or_default()
                        .insert((epoch, offset), payload);
                }
                Outcome::Refused => ledger.refused += 1,
                Outcome::Unknown => {
                    ledger.ambiguous.insert(payload);
                }
            }
        }
    }
}

/// Sends publications, keeping a connection where one is needed.
struct Sender {
    via: PublishVia,
    next_url: usize,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    ws: Option<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>>,
    next_id: u64,
}

impl Sender {
    fn new(via: PublishVia) -> Sender {
        Sender {
            via,
            next_url: 0,
            http: Client::builder(TokioExecutor::new()).build_http(),
            ws: None,
            next_id: 0,
        }
    }

    fn urls(&self) -> &[String] {
        match &self.via {
            PublishVia::Http(urls) | PublishVia::WebSocket(urls) => urls,
        }
    }

    fn url(&self) -> String {
        let urls = self.urls();
        urls[self.next_url % urls.len()].clone()
    }

    /// The node did not answer: use the next one from now on.
    fn rotate(&mut self) {
        self.next_url += 1;
        self.ws = None;
    }

    async fn publish(&mut self, channel: &str, data: Value) -> Outcome {
        let outcome = match self.via {
            PublishVia::Http(_) => self.publish_http(channel, data).await,
            PublishVia::WebSocket(_) => self.publish_ws(channel, data).await,
        };
        if matches!(outcome, Outcome::Unknown) {
            self.rotate();
        }
        outcome
    }

    async fn publish_http(&mut self, channel: &str, data: Value) -> Outcome {
        let body = json!({"channel": channel, "data": data}).to_string();
        let request = http::Request::post(format!("{}/api/publish", self.url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else {
            return Outcome::Refused;
        };
        let response = match tokio::time::timeout(TIMEOUT, self.http.request(request)).await {
            Ok(Ok(response)) => response,
            // Never reached the node (connection refused): not published.
            Ok(Err(error)) if error.is_connect() => {
                self.rotate();
                return Outcome::Refused;
            }
            _ => return Outcome::Unknown,
        };
        let status = response.status();
        let Ok(Ok(body)) = tokio::time::timeout(TIMEOUT, response.into_body().collect()).await else {
            return Outcome::Unknown;
        };
        if status == http::StatusCode::SERVICE_UNAVAILABLE {
            // `unavailable`: the broker connection failed; if it failed
            // after the publish was sent, the publication may have been
            // made (the node cannot tell). Not a refusal.
            self.rotate();
            return Outcome::Unknown;
        }
        if !status.is_success() {
            // Any other error answer: nothing was published.
            if status.is_server_error() {
                self.rotate();
            }
            return Outcome::Refused;
        }
        acked(&serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null))
    }

    async fn publish_ws(&mut self, channel: &str, data: Value) -> Outcome {
        if self.ws.is_none() {
            match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(self.url())).await {
                Ok(Ok((ws, _))) => self.ws = Some(ws),
                _ => {
                    self.rotate();
                    return Outcome::Refused;
                }
            }
        }
        let Some(ws) = self.ws.as_mut() else {
            return Outcome::Refused;
        };
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"type":"publish","id":id,"channel":channel,"data":data});
        if ws.send(Message::text(command.to_string())).await.is_err() {
            return Outcome::Unknown;
        }
        let reply = tokio::time::timeout(TIMEOUT, async {
            while let Some(Ok(frame)) = ws.next().await {
                if let Message::Text(text) = frame
                    && let Ok(value) = serde_json::from_str::<Value>(&text)
                    && value["id"].as_u64() == Some(id)
                {
                    return Some(value);
                }
            }
            None
        })
        .await;
        match reply {
            Ok(Some(value)) if value["type"] == "published" => acked(&value),
            // As over HTTP: a broker failure may come after the publish.
            Ok(Some(value)) if value["code"] == "unavailable" => Outcome::Unknown,
            Ok(Some(_)) => Outcome::Refused,
            _ => Outcome::Unknown,
        }
    }
}

fn acked(answer: &Value) -> Outcome {
    match (answer["epoch"].as_str(), answer["offset"].as_u64()) {
        (Some(epoch), Some(offset)) => Outcome::Acked(Arc::from(epoch), offset),
        _ => Outcome::Unknown,
    }
}
