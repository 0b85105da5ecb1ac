//! Publishes probes on a fixed schedule, through the HTTP API or through
//! WebSocket clients, and counts what the gateway acknowledged per channel.
//!
//! Publication `n` is due at `start + n / rate` and carries that time, not
//! the time it actually left: when the publisher falls behind (too few
//! requests in flight, a slow API), the delay shows up as latency instead
//! of being hidden (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc};

use crate::clients::Connector;
use crate::report::Latency;
use crate::wire::{self, Frame};

/// Where publications go.
pub enum Route {
    /// `POST {api}/api/publish`, round robin over the APIs.
    Http {
        apis: Vec<String>,
        api_key: Option<String>,
        client: Client<HttpConnector, Full<Bytes>>,
    },
    /// `publish` commands over these connections, round robin.
    Ws(Vec<mpsc::Sender<WsPublish>>),
}

/// A publication handed to a publishing connection.
pub struct WsPublish {
    id: u64,
    channel: usize,
    name: String,
    payload: String,
}

/// The publisher side of a run.
pub struct Publisher {
    route: Route,
    /// Channel names; publication targets are indices into this list.
    pub channels: Vec<String>,
    /// Next sequence number per channel (continues across steps).
    next_seq: Vec<u64>,
    /// Acknowledged publications per channel in the current step.
    acked: Arc<Vec<AtomicU64>>,
    failed: Arc<AtomicU64>,
    round_trip: Arc<Mutex<Latency>>,
    in_flight: Arc<Semaphore>,
    concurrency: usize,
    padding: String,
}

/// What one step of publishing did.
pub struct Published {
    pub published: u64,
    pub failed: u64,
    pub acked: Vec<u64>,
    pub round_trip: Latency,
}

impl Publisher {
    pub fn http(
        apis: Vec<String>,
        api_key: Option<String>,
        channels: Vec<String>,
        concurrency: usize,
        payload: usize,
    ) -> Publisher {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(concurrency)
            .build(connector);
        let apis = apis
            .into_iter()
            .map(|a| format!("{}/api/publish", a.trim_end_matches('/')))
            .collect();
        Publisher::new(
            Route::Http {
                apis,
                api_key,
                client,
            },
            channels,
            concurrency,
            payload,
        )
    }

    /// Publishes over `connections` WebSocket clients spread over `urls`.
    pub async fn ws(
        connector: Connector,
        urls: &[String],
        connections: usize,
        channels: Vec<String>,
        concurrency: usize,
        payload: usize,
    ) -> anyhow::Result<Publisher> {
        let mut publisher = Publisher::new(Route::Ws(Vec::new()), channels, concurrency, payload);
        let mut senders = Vec::new();
        for k in 0..connections.max(1) {
            let ws = connector.connect(&urls[k % urls.len()], None).await?;
            let (tx, rx) = mpsc::channel(concurrency.max(1));
            tokio::spawn(ws_publisher(
                ws,
                connector.protocol(),
                rx,
                publisher.acked.clone(),
                publisher.failed.clone(),
                publisher.round_trip.clone(),
                publisher.in_flight.clone(),
            ));
            senders.push(tx);
        }
        publisher.route = Route::Ws(senders);
        Ok(publisher)
    }

    fn new(route: Route, channels: Vec<String>, concurrency: usize, payload: usize) -> Publisher {
        Publisher {
            route,
            next_seq: vec![0; channels.len()],
            acked: Arc::new((0..channels.len()).map(|_| AtomicU64::new(0)).collect()),
            channels,
            failed: Arc::default(),
            round_trip: Arc::default(),
            in_flight: Arc::new(Semaphore::new(concurrency.max(1))),
            concurrency: concurrency.max(1),
            padding: "x".repeat(payload),
        }
    }

    /// Publishes at `rate` per second for `duration`; `pick(n)` chooses the
    /// channel of publication `n`. Returns once every request was answered.
    pub async fn run(
        &mut self,
        rate: f64,
        duration: Duration,
        mut pick: impl FnMut(u64) -> usize,
    ) -> anyhow::Result<Published> {
        let total = (rate * duration.as_secs_f64()).round() as u64;
        let interval = Duration::from_secs_f64(1.0 / rate.max(1e-9));
        let start = Instant::now();
        let start_micros = wire::now_micros();
        for n in 0..total {
            let due = start + interval.mul_f64(n as f64);
            pace_until(due).await;
            let channel = pick(n);
            let seq = self.next_seq[channel];
            self.next_seq[channel] += 1;
            let payload = wire::probe(
                seq,
                start_micros + (due - start).as_micros() as u64,
                &self.padding,
            );
            // Waiting here for a free slot is publish-side queueing: the
            // scheduled time in the payload makes it count as latency.
            let permit = self.in_flight.clone().acquire_owned().await?;
            match &self.route {
                Route::Http {
                    apis,
                    api_key,
                    client,
                } => {
                    let body = format!(
                        r#"{{"channel":{},"data":{payload}}}"#,
                        serde_json::Value::from(self.channels[channel].as_str())
                    );
                    let mut request = http::Request::post(&apis[n as usize % apis.len()])
                        .header("content-type", "application/json");
                    if let Some(key) = api_key {
                        request = request.header("authorization", format!("Bearer {key}"));
                    }
                    let request = request.body(Full::new(Bytes::from(body)))?;
                    let (client, acked, failed, round_trip) = (
                        client.clone(),
                        self.acked.clone(),
                        self.failed.clone(),
                        self.round_trip.clone(),
                    );
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let ok = match client.request(request).await {
                            Ok(response) => {
                                let ok = response.status().is_success();
                                let _ = response.into_body().collect().await;
                                ok
                            }
                            Err(_) => false,
                        };
                        round_trip.lock().record(sent.elapsed().as_micros() as u64);
                        if ok {
                            acked[channel].fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(permit);
                    });
                }
                Route::Ws(senders) => {
                    // The connection task returns the permit when the ack arrives.
                    permit.forget();
                    senders[n as usize % senders.len()]
                        .send(WsPublish {
                            id: n + 1,
                            channel,
                            name: self.channels[channel].clone(),
                            payload,
                        })
                        .await?;
                }
            }
        }
        // Every request answered: all permits back.
        let _all = tokio::time::timeout(
            Duration::from_secs(30),
            self.in_flight.acquire_many(self.concurrency as u32),
        )
        .await
        .map_err(|_| anyhow::anyhow!("publications still unanswered after 30 s"))??;
        Ok(Published {
            published: total,
            failed: self.failed.swap(0, Ordering::Relaxed),
            acked: self.acked.iter().map(|a| a.swap(0, Ordering::Relaxed)).collect(),
            round_trip: std::mem::take(&mut *self.round_trip.lock()),
        })
    }
}

/// One publishing WebSocket: sends `publish` commands, matches the
/// `published` (or error) replies, in order, to what it sent.
async fn ws_publisher(
    mut ws: crate::clients::Ws,
    protocol: wire::Protocol,
    mut commands: mpsc::Receiver<WsPublish>,
    acked: Arc<Vec<AtomicU64>>,
    failed: Arc<AtomicU64>,
    round_trip: Arc<Mutex<Latency>>,
    in_flight: Arc<Semaphore>,
) {
    let mut pending = std::collections::VecDeque::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(p) = command else { break };
                if ws.send(wire::publish(protocol, p.id, &p.name, &p.payload)).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    in_flight.add_permits(1);
                    continue;
                }
                pending.push_back((p.channel, Instant::now()));
            }
            message = ws.next() => {
                let frame = match message {
                    Some(Ok(m)) => wire::parse(protocol, &m),
                    _ => Frame::Closed,
                };
                let ok = match frame {
                    Frame::Published => true,
                    Frame::Error(_) => false,
                    Frame::Closed => {
                        // Everything unanswered failed.
                        let n = pending.len();
                        failed.fetch_add(n as u64, Ordering::Relaxed);
                        in_flight.add_permits(n);
                        pending.clear();
                        break;
                    }
                    _ => continue,
                };
                if let Some((channel, sent)) = pending.pop_front() {
                    round_trip.lock().record(sent.elapsed().as_micros() as u64);
                    if ok {
                        acked[channel].fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    in_flight.add_permits(1);
                }
            }
        }
    }
}

/// Waits until `at`, precisely and without spinning: tokio's timer has
/// millisecond granularity, so it sleeps on the timer to within a
/// millisecond and then sleeps the thread for the rest (the generator shares
/// the cores with the gateway; a busy wait would steal them).
async fn pace_until(at: Instant) {
    let coarse = Duration::from_millis(1);
    if let Some(wait) = at
        .checked_duration_since(Instant::now())
        .and_then(|d| d.checked_sub(coarse))
    {
        tokio::time::sleep(wait).await;
    }
    if let Some(rest) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(rest);
    }
    // Let the requests and replies in flight make progress (one thread).
    tokio::task::yield_now().await;
}
