//! Presence reads under load: `GET /api/presence/stats` and
//! `GET /api/presence` against a channel the fleet joined, with a fixed
//! number of requests in flight, for the latency of each and the rate.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;

use crate::report::Latency;

/// What a run of reads measured.
pub struct Reads {
    pub latency: Latency,
    pub per_second: f64,
    pub failed: u64,
    /// The last answer's body (to show the counts).
    pub last: String,
}

/// `requests` GETs of `path` (such as `/api/presence/stats?channel=x`),
/// `in_flight` at a time, spread over `apis`.
pub async fn run(
    apis: &[String],
    api_key: Option<&str>,
    path: &str,
    requests: u64,
    in_flight: usize,
) -> anyhow::Result<Reads> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector);
    let latency = Arc::new(Mutex::new(Latency::default()));
    let failed = Arc::new(Mutex::new(0u64));
    let last = Arc::new(Mutex::new(String::new()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..in_flight.max(1) {
        let (client, latency, failed, last, next) = (
            client.clone(),
            latency.clone(),
            failed.clone(),
            last.clone(),
            next.clone(),
        );
        let url = format!("{}{path}", apis[worker % apis.len()].trim_end_matches('/'));
        let auth = api_key.map(|k| format!("Bearer {k}"));
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let mut request = http::Request::get(&url);
                if let Some(auth) = &auth {
                    request = request.header("authorization", auth);
                }
                let Ok(request) = request.body(Empty::new()) else {
                    *failed.lock() += 1;
                    continue;
                };
                let sent = Instant::now();
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => {
                        let body = response.into_body().collect().await.map(|b| b.to_bytes());
                        latency.lock().record(sent.elapsed().as_micros() as u64);
                        if let Ok(body) = body {
                            *last.lock() = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                        }
                    }
                    _ => *failed.lock() += 1,
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let latency = latency.lock().clone();
    let per_second = latency.count() as f64 / elapsed.max(1e-9);
    let failed = *failed.lock();
    let last = last.lock().clone();
    Ok(Reads {
        latency,
        per_second,
        failed,
        last,
    })
}
