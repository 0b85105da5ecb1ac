//! `loadtest fanout`: N subscribers of one channel, publications over HTTP
//! at a fixed rate; reports deliveries/s, loss, latency and CPU time.
//!
//! Each publication carries its scheduled send time; latency is receive time
//! minus scheduled time, so publish-side queueing counts too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::Message;

use crate::{clients, procstat};
use clients::connect_and_subscribe;

#[derive(clap::Args)]
pub struct Args {
    /// WebSocket URL of the gateway the subscribers use.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Base URL of the HTTP API to publish through.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// API key, if the gateway requires one.
    #[arg(long)]
    api_key: Option<String>,
    /// Subscribers of the channel.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Publications per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Extra payload bytes per publication.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// PID of the gateway process, for its CPU time.
    #[arg(long)]
    pid: Option<u32>,
    /// Loopback source addresses to spread subscribers over (comma-separated).
    #[arg(long, default_value = "")]
    sources: String,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Waits until `at` precisely. tokio's timer has millisecond granularity, so
/// it sleeps to just before the slot and yields until the slot; otherwise every
/// publication would leave up to a millisecond after its scheduled time and
/// that delay would show up as latency.
async fn pace_until(at: Instant) {
    let early = Duration::from_millis(2);
    if let Some(sleep) = at
        .checked_duration_since(Instant::now())
        .and_then(|d| d.checked_sub(early))
    {
        tokio::time::sleep(sleep).await;
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// Extracts the number after `"key":` in a frame, without a full JSON parse.
fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: &str = &text[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let sources = clients::parse_sources(&args.sources)?;
    let channel = format!("fanout-{}", now_micros());
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::with_capacity(args.subscribers);
    let connect_started = Instant::now();
    for chunk in (0..args.subscribers).collect::<Vec<_>>().chunks(256) {
        let connects = chunk.iter().map(|i| {
            let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            connect_and_subscribe(&args.url, source, &channel)
        });
        for ws in futures_util::future::join_all(connects).await {
            let mut ws = ws?;
            let received = received.clone();
            let mut stop = stop_rx.clone();
            readers.push(tokio::spawn(async move {
                let mut latency =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                let mut last_seq = None;
                let mut out_of_order = 0u64;
                loop {
                    let message = tokio::select! {
                        _ = stop.changed() => break,
                        message = ws.next() => match message {
                            Some(Ok(message)) => message,
                            _ => break,
                        },
                    };
                    let Message::Text(text) = message else { continue };
                    let (Some(seq), Some(sent)) = (field(&text, "\"seq\":"), field(&text, "\"t\":")) else {
                        continue;
                    };
                    let _ = latency.record(now_micros().saturating_sub(sent).max(1));
                    if last_seq.is_some_and(|l| seq <= l) {
                        out_of_order += 1;
                    }
                    last_seq = Some(seq);
                    received.fetch_add(1, Ordering::Relaxed);
                }
                (latency, out_of_order)
            }));
        }
    }
    eprintln!(
        "{} subscribers connected in {:.2}s",
        args.subscribers,
        connect_started.elapsed().as_secs_f64()
    );

    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);
    let url = format!("{}/api/publish", args.api.trim_end_matches('/'));
    let padding = "x".repeat(args.payload);
    let total = args.rate * args.duration.as_secs().max(1);
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let server_cpu_before = args.pid.map(|p| procstat::cpu_time(&p.to_string())).transpose()?;
    let own_cpu_before = procstat::cpu_time("self")?;
    let start = Instant::now();
    let start_micros = now_micros();
    let mut failed = 0u64;
    let mut round_trip = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for seq in 0..total {
        let scheduled = start + interval.mul_f64(seq as f64);
        pace_until(scheduled).await;
        let sent = Instant::now();
        let t = start_micros + (scheduled - start).as_micros() as u64;
        let body = format!(r#"{{"channel":"{channel}","data":{{"seq":{seq},"t":{t},"pad":"{padding}"}}}}"#);
        let mut request = http::Request::post(&url).header("content-type", "application/json");
        if let Some(key) = &args.api_key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = client
            .request(request.body(Full::new(Bytes::from(body)))?)
            .await?;
        if !response.status().is_success() {
            failed += 1;
        }
        let _ = response.into_body().collect().await;
        let _ = round_trip.record(sent.elapsed().as_micros().max(1) as u64);
    }
    let publish_time = start.elapsed();
    let expected = (total - failed) * args.subscribers as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivery_time = start.elapsed();
    let server_cpu = match (args.pid, server_cpu_before) {
        (Some(pid), Some(before)) => Some(procstat::cpu_time(&pid.to_string())? - before),
        _ => None,
    };
    let own_cpu = procstat::cpu_time("self")? - own_cpu_before;

    let _ = stop_tx.send(true);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut out_of_order = 0;
    for reader in readers {
        if let Ok((h, o)) = reader.await {
            latency.add(&h)?;
            out_of_order += o;
        }
    }
    let got = received.load(Ordering::Relaxed);
    let rate = got as f64 / delivery_time.as_secs_f64();
    println!("subscribers:           {}", args.subscribers);
    println!(
        "published:             {} in {:.2}s ({} failed)",
        total,
        publish_time.as_secs_f64(),
        failed
    );
    println!(
        "deliveries:            {got} of {expected} expected ({} lost)",
        expected.saturating_sub(got)
    );
    println!("out of order:          {out_of_order}");
    println!("delivery rate:         {rate:.0}/s");
    println!(
        "latency (ms):          p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.9) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.value_at_quantile(0.999) as f64 / 1000.0,
        latency.max() as f64 / 1000.0
    );
    println!(
        "publish round trip:    p50 {:.2}  p99 {:.2} ms (HTTP request to answer)",
        round_trip.value_at_quantile(0.5) as f64 / 1000.0,
        round_trip.value_at_quantile(0.99) as f64 / 1000.0
    );
    if let Some(cpu) = server_cpu {
        println!(
            "gateway CPU:           {:.2}s ({:.2}s per million deliveries)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() / (got.max(1) as f64 / 1e6)
        );
    }
    println!("generator CPU:         {:.2}s", own_cpu.as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn reads_numbers_from_frames() {
        let text = r#"{"type":"message","channel":"c","data":{"seq":42,"t":1700000000123456,"pad":"xx"}}"#;
        assert_eq!(field(text, "\"seq\":"), Some(42));
        assert_eq!(field(text, "\"t\":"), Some(1_700_000_000_123_456));
        assert_eq!(field(text, "\"nope\":"), None);
    }
}
