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
    /// `POST {api}/api/publish` (or, with `batch` > 1, `POST {api}/api/batch`
    /// with up to `batch` publications), round robin over the APIs.
    Http {
        apis: Vec<String>,
        api_key: Option<String>,
        // Boxed: the client is large beside the other variant.
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        batch: usize,
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
        padding: String,
        batch: usize,
    ) -> Publisher {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            // Keep every connection opened: one the pool cannot take back would be
            // closed and reopened, a TCP handshake per request under load.
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        let endpoint = if batch > 1 { "batch" } else { "publish" };
        let apis = apis
            .into_iter()
            .map(|a| format!("{}/api/{endpoint}", a.trim_end_matches('/')))
            .collect();
        Publisher::new(
            Route::Http {
                apis,
                api_key,
                client: Box::new(client),
                batch: batch.max(1),
            },
            channels,
            concurrency,
            padding,
        )
    }

    /// Publishes over `connections` WebSocket clients spread over `urls`.
    pub async fn ws(
        connector: Connector,
        urls: &[String],
        connections: usize,
        channels: Vec<String>,
        concurrency: usize,
        padding: String,
    ) -> anyhow::Result<Publisher> {
        let mut publisher = Publisher::new(Route::Ws(Vec::new()), channels, concurrency, padding);
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

    fn new(route: Route, channels: Vec<String>, concurrency: usize, padding: String) -> Publisher {
        Publisher {
            route,
            next_seq: vec![0; channels.len()],
            acked: Arc::new((0..channels.len()).map(|_| AtomicU64::new(0)).collect()),
            channels,
            failed: Arc::default(),
            round_trip: Arc::default(),
            in_flight: Arc::new(Semaphore::new(concurrency.max(1))),
            concurrency: concurrency.max(1),
            padding,
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
        let mut ticks = Ticker::start(start, interval, total);
        // HTTP batches being filled: (channel, item JSON), and when the
        // first item was due.
        let mut batch: Vec<(usize, String)> = Vec::new();
        let mut batch_since = start;
        let mut requests = 0usize;
        while let Some(n) = ticks.recv().await {
            let due = start + interval.mul_f64(n as f64);
            let channel = pick(n);
            let seq = self.next_seq[channel];
            self.next_seq[channel] += 1;
            let payload = wire::probe(
                seq,
                start_micros + (due - start).as_micros() as u64,
                &self.padding,
            );
            match &self.route {
                Route::Http { batch: size, .. } => {
                    let item = format!(
                        r#"{{"channel":{},"data":{payload}}}"#,
                        serde_json::Value::from(self.channels[channel].as_str())
                    );
                    if batch.is_empty() {
                        batch_since = due;
                    }
                    batch.push((channel, item));
                    // Full, the last one, or the first waited long enough.
                    if batch.len() >= *size || n + 1 == total || due - batch_since >= BATCH_WINDOW {
                        // Waiting for a free slot is publish-side queueing:
                        // the scheduled times in the payloads count it.
                        let permit = self.in_flight.clone().acquire_owned().await?;
                        self.send_http(requests, std::mem::take(&mut batch), permit)?;
                        requests += 1;
                    }
                }
                Route::Ws(senders) => {
                    let permit = self.in_flight.clone().acquire_owned().await?;
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

impl Publisher {
    /// Sends one HTTP request for `items` (one publication, or a batch) and
    /// counts what was acknowledged when the answer comes.
    fn send_http(
        &self,
        request_number: usize,
        items: Vec<(usize, String)>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> anyhow::Result<()> {
        let Route::Http {
            apis,
            api_key,
            client,
            batch,
        } = &self.route
        else {
            anyhow::bail!("not an HTTP publisher");
        };
        let channels: Vec<usize> = items.iter().map(|(c, _)| *c).collect();
        let body = if *batch > 1 {
            let list: Vec<String> = items.into_iter().map(|(_, item)| item).collect();
            format!(r#"{{"publications":[{}]}}"#, list.join(","))
        } else {
            items.into_iter().next().map(|(_, item)| item).unwrap_or_default()
        };
        let mut request = http::Request::post(&apis[request_number % apis.len()])
            .header("content-type", "application/json");
        if let Some(key) = api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let (client, acked, failed, round_trip, batched) = (
            client.clone(),
            self.acked.clone(),
            self.failed.clone(),
            self.round_trip.clone(),
            *batch > 1,
        );
        tokio::spawn(async move {
            let sent = Instant::now();
            // Per item: acknowledged or not.
            let outcome: Vec<bool> = match client.request(request).await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    let body = response.into_body().collect().await.map(|b| b.to_bytes());
                    match (batched, body) {
                        (false, _) => vec![ok],
                        (true, Ok(body)) => batch_outcome(&body, channels.len()),
                        (true, Err(_)) => vec![false; channels.len()],
                    }
                }
                Err(_) => vec![false; channels.len()],
            };
            round_trip.lock().record(sent.elapsed().as_micros() as u64);
            for (channel, ok) in channels.into_iter().zip(outcome) {
                if ok {
                    acked[channel].fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        Ok(())
    }
}

/// How long a batch may wait for more publications before it is sent.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// Which items of a `/api/batch` answer were published: a result without
/// an `error`, in request order.
fn batch_outcome(body: &[u8], items: usize) -> Vec<bool> {
    let results = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["results"].as_array().cloned())
        .unwrap_or_default();
    (0..items)
        .map(|i| {
            results
                .get(i)
                .is_some_and(|r| r.get("error").is_none() && r.get("offset").is_some())
        })
        .collect()
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

/// The publication schedule, kept by a thread of its own: tokio's timer
/// has millisecond granularity, which would add up to a millisecond of
/// lateness to every publication (and to its measured latency). The thread
/// sleeps to just before each slot, spins the last few tens of
/// microseconds, and sends the slot's number to the publishing task.
struct Ticker;

impl Ticker {
    fn start(start: Instant, interval: Duration, total: u64) -> mpsc::Receiver<u64> {
        let (tx, rx) = mpsc::channel(1024);
        std::thread::spawn(move || {
            for n in 0..total {
                let due = start + interval.mul_f64(n as f64);
                // thread::sleep oversleeps by the timer slack (~50 µs).
                if let Some(wait) = due
                    .checked_duration_since(Instant::now())
                    .and_then(|d| d.checked_sub(Duration::from_micros(100)))
                {
                    std::thread::sleep(wait);
                }
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                if tx.blocking_send(n).is_err() {
                    return;
                }
            }
        });
        rx
    }
}
