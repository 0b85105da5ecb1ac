//! A subscriber that behaves like a good client: on any disconnect it
//! reconnects (to the next node in its list) and resubscribes every channel
//! with `since` = the last position it saw, recording everything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::{Event, Payload, Position};

type Log = Arc<Mutex<HashMap<String, Vec<Event>>>>;

/// A recording, recovering subscriber of a set of channels.
pub struct Subscriber {
    pub name: String,
    log: Log,
    stop: watch::Sender<bool>,
    cut: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Starts and returns once subscribed to every channel.
    pub(super) async fn start(
        name: &str,
        urls: Vec<String>,
        channels: Vec<String>,
    ) -> anyhow::Result<Subscriber> {
        anyhow::ensure!(!urls.is_empty(), "a subscriber needs at least one URL");
        let log: Log = Arc::default();
        let (stop, stopped) = watch::channel(false);
        let cut = Arc::new(Notify::new());
        let (ready_tx, ready) = oneshot::channel();
        let task = tokio::spawn(run(urls, channels, log.clone(), stopped, cut.clone(), ready_tx));
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .map_err(|_| anyhow::anyhow!("subscriber {name} did not get subscribed within 10 s"))??;
        Ok(Subscriber {
            name: name.to_owned(),
            log,
            stop,
            cut,
            task,
        })
    }

    /// Everything recorded so far, per channel.
    pub fn log(&self) -> HashMap<String, Vec<Event>> {
        self.log.lock().clone()
    }

    /// Drops the current connection without a close handshake (a network
    /// cut); the subscriber reconnects to the next node.
    pub fn cut(&self) {
        self.cut.notify_one();
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    urls: Vec<String>,
    channels: Vec<String>,
    log: Log,
    mut stop: watch::Receiver<bool>,
    cut: Arc<Notify>,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut positions: HashMap<String, Position> = HashMap::new();
    let mut backoff = Duration::from_millis(50);
    for url in urls.iter().cycle() {
        if *stop.borrow() {
            return;
        }
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
            backoff = Duration::from_millis(50);
            let connection = Connection {
                channels: &channels,
                positions: &mut positions,
                log: &log,
                ready: &mut ready,
            };
            let stopped = connection.serve(ws, &mut stop, &cut).await;
            for channel in &channels {
                log.lock()
                    .entry(channel.clone())
                    .or_default()
                    .push(Event::Disconnected);
            }
            if stopped {
                return;
            }
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

struct Connection<'a> {
    channels: &'a [String],
    positions: &'a mut HashMap<String, Position>,
    log: &'a Log,
    ready: &'a mut Option<oneshot::Sender<()>>,
}

impl Connection<'_> {
    /// Subscribes everything and records until the connection ends.
    /// Returns true if asked to stop.
    async fn serve<S>(
        self,
        mut ws: tokio_tungstenite::WebSocketStream<S>,
        stop: &mut watch::Receiver<bool>,
        cut: &Notify,
    ) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        for (i, channel) in self.channels.iter().enumerate() {
            let mut command = json!({"type":"subscribe","id":i + 1,"channel":channel});
            if let Some((epoch, offset)) = self.positions.get(channel) {
                command["since"] = json!({"epoch":&**epoch,"offset":offset});
            }
            if ws.send(Message::text(command.to_string())).await.is_err() {
                return false;
            }
        }
        let mut pending = self.channels.len();
        loop {
            let frame = tokio::select! {
                _ = stop.changed() => return true,
                _ = cut.notified() => return false,
                frame = ws.next() => frame,
            };
            let Some(Ok(Message::Text(text))) = frame else {
                match frame {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return false,
                }
            };
            let Ok(value) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            match value["type"].as_str() {
                Some("subscribed") => {
                    let channel = value["channel"].as_str().unwrap_or_default().to_string();
                    let Some(position) = position_of(&value) else {
                        continue;
                    };
                    self.record(
                        &channel,
                        Event::Subscribed {
                            position: position.clone(),
                            recovered: value["recovered"].as_bool(),
                        },
                    );
                    self.positions.insert(channel, position);
                    pending = pending.saturating_sub(1);
                    if pending == 0
                        && let Some(ready) = self.ready.take()
                    {
                        let _ = ready.send(());
                    }
                }
                Some("message") => {
                    let channel = value["channel"].as_str().unwrap_or_default().to_string();
                    let Some(position) = position_of(&value) else {
                        continue;
                    };
                    let payload = value["data"]["pub"]
                        .as_str()
                        .zip(value["data"]["seq"].as_u64())
                        .map(|(p, s)| Payload {
                            publisher: p.to_string(),
                            seq: s,
                        });
                    self.record(
                        &channel,
                        Event::Message {
                            position: position.clone(),
                            payload,
                        },
                    );
                    self.positions.insert(channel, position);
                }
                Some("gap") => {
                    let channel = value["channel"].as_str().unwrap_or_default().to_string();
                    let Some(position) = position_of(&value) else {
                        continue;
                    };
                    self.record(
                        &channel,
                        Event::Gap {
                            position: position.clone(),
                        },
                    );
                    self.positions.insert(channel, position);
                }
                // A refused subscribe (Redis down, say): try again elsewhere.
                Some("error") => return false,
                _ => {}
            }
        }
    }

    fn record(&self, channel: &str, event: Event) {
        self.log.lock().entry(channel.to_owned()).or_default().push(event);
    }
}

fn position_of(value: &Value) -> Option<Position> {
    Some((Arc::from(value["epoch"].as_str()?), value["offset"].as_u64()?))
}
