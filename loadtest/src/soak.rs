//! `loadtest soak`: a long churn run that looks for leaks and loss.
//!
//! `connections` WebSocket subscribers, each on one channel: most spread
//! over `channels` channels, a share on one broadcast channel that gets a
//! publication every so often. Every second a few subscribers are replaced
//! (closed, and a new one opened on the same channel), `replace_per_minute`
//! of all of them each minute. Each subscriber checks its own stream by
//! the publications' offsets: a jump is a loss, a repeat (or a step back) a
//! duplicate. Once a minute the run samples the gateways' RSS,
//! open file descriptors and runtime tasks (`gateway_runtime_tasks` from
//! `/metrics`) and Redis's memory; at the end RSS and descriptors must be
//! within `max_growth` of their level after the warm-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::clients::Connector;
use crate::publisher::Publisher;
use crate::wire::{self, Frame, Protocol};

/// The soak's own flags.
#[derive(clap::Args, Clone, Debug)]
pub struct SoakArgs {
    #[arg(long, default_value_t = 10_000)]
    pub connections: u64,
    #[arg(long, default_value_t = 1_000)]
    pub channels: u64,
    /// Share of the subscribers on the one broadcast channel.
    #[arg(long, default_value_t = 0.1)]
    pub broadcast_share: f64,
    /// Share of all subscribers replaced each minute.
    #[arg(long, default_value_t = 0.2)]
    pub replace_per_minute: f64,
    /// Publications per second over the regular channels.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Publications per second to the broadcast channel.
    #[arg(long, default_value_t = 2.0)]
    pub broadcast_rate: f64,
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub sample: Duration,
    /// RSS and descriptors are compared with their first sample after this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Redis's host:port, to sample its `used_memory`.
    #[arg(long)]
    pub redis: Option<String>,
    /// Growth of RSS or descriptors from after the warm-up to the end that fails the run.
    #[arg(long, default_value_t = 0.05)]
    pub max_growth: f64,
}

/// What the soak is asked to do: where the nodes are, and its flags.
pub struct SoakPlan {
    pub urls: Vec<String>,
    pub apis: Vec<String>,
    pub api_key: Option<String>,
    pub pids: Vec<u32>,
    pub args: SoakArgs,
}

/// One sample.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    pub elapsed_secs: f64,
    /// Per gateway process, in `--pid` order.
    pub rss_bytes: Vec<u64>,
    pub open_fds: Vec<u64>,
    pub runtime_tasks: Vec<u64>,
    pub redis_used_memory: Option<u64>,
    pub connections_open: u64,
    pub replaced: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub dropped: u64,
    pub published: u64,
    pub publish_failed: u64,
}

/// The soak's findings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SoakReport {
    pub samples: Vec<Sample>,
    /// End over after-warm-up, per process (1.0: no growth).
    pub rss_ratio: Vec<f64>,
    pub fds_ratio: Vec<f64>,
    pub within_bounds: bool,
    pub clean: bool,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
    /// Closed by the server or broken, not by us.
    dropped: AtomicU64,
    open: AtomicU64,
    replaced: AtomicU64,
}

/// One subscriber's task: reads until told to stop, checking that each
/// publication's sequence number follows the last.
fn spawn_subscriber(
    connector: Connector,
    url: String,
    channel: String,
    counters: Arc<Counters>,
) -> oneshot::Sender<()> {
    let (stop, mut stopped) = oneshot::channel();
    tokio::spawn(async move {
        let mut ws = match connector.connect_and_subscribe(&url, None, &channel).await {
            Ok(ws) => ws,
            Err(_) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        counters.open.fetch_add(1, Ordering::Relaxed);
        let mut last: Option<u64> = None;
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    let _ = ws.close(None).await;
                    break;
                }
                message = futures_util::StreamExt::next(&mut ws) => {
                    let Some(Ok(message)) = message else {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    if let Frame::Probe { .. } = wire::parse(Protocol::Json, &message)
                        && let Some(offset) = offset_of(&message)
                    {
                        counters.received.fetch_add(1, Ordering::Relaxed);
                        match last {
                            Some(previous) if offset <= previous => {
                                counters.duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(previous) => {
                                counters.lost.fetch_add(offset - previous - 1, Ordering::Relaxed);
                                last = Some(offset);
                            }
                            None => last = Some(offset),
                        }
                    }
                }
            }
        }
        counters.open.fetch_sub(1, Ordering::Relaxed);
    });
    stop
}

/// The publication's offset in its channel. The server's order, not the
/// publisher's: publications sent at once to two nodes may be accepted in
/// either order, and the offsets say which; a subscriber must see them
/// one by one.
fn offset_of(message: &tokio_tungstenite::tungstenite::Message) -> Option<u64> {
    let text = message.to_text().ok()?;
    // After the data, which comes first: the last `"offset":` is the frame's.
    let at = text.rfind("\"offset\":")? + "\"offset\":".len();
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// `gateway_runtime_tasks` from a node's `/metrics`.
async fn runtime_tasks(api: &str) -> u64 {
    let Some(hostport) = api.strip_prefix("http://") else {
        return 0;
    };
    let Ok(mut stream) = tokio::net::TcpStream::connect(hostport.trim_end_matches('/')).await else {
        return 0;
    };
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {hostport}\r\n\r\n");
    let mut body = String::new();
    if stream.write_all(request.as_bytes()).await.is_err() || stream.read_to_string(&mut body).await.is_err()
    {
        return 0;
    }
    body.lines()
        .find_map(|l| l.strip_prefix("gateway_runtime_tasks "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Redis's `used_memory` (`INFO memory`) at `addr` (host:port).
async fn redis_memory(addr: &str) -> Option<u64> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(b"INFO memory\r\n").await.ok()?;
    let mut buffer = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buffer[..n]);
    text.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

pub async fn soak(target: SoakPlan, connector: Connector) -> anyhow::Result<SoakReport> {
    let plan = &target.args;
    let counters = Arc::new(Counters::default());
    let regular = plan.channels.max(1);
    let prefix = format!("soak-{}-", wire::now_micros());
    let mut names: Vec<String> = (0..regular).map(|c| format!("{prefix}{c}")).collect();
    names.push(format!("{prefix}broadcast"));
    let broadcast = names.len() - 1;
    // Subscriber i's channel and node.
    let broadcast_every = if plan.broadcast_share > 0.0 {
        (1.0 / plan.broadcast_share).round().max(1.0) as u64
    } else {
        u64::MAX
    };
    let channel_of = move |i: u64| -> usize {
        if i.is_multiple_of(broadcast_every) {
            broadcast
        } else {
            (i % regular) as usize
        }
    };
    let url_of = |i: u64| target.urls[(i as usize) % target.urls.len()].clone();
    let mut stops = Vec::with_capacity(plan.connections as usize);
    for i in 0..plan.connections {
        stops.push(spawn_subscriber(
            connector.clone(),
            url_of(i),
            names[channel_of(i)].clone(),
            counters.clone(),
        ));
        if i % 200 == 199 {
            // Open in waves: the server's pending-connection bound is
            // about handshakes in flight.
            while counters.open.load(Ordering::Relaxed) + counters.dropped.load(Ordering::Relaxed) < i / 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let opened = Instant::now();
    while counters.open.load(Ordering::Relaxed) + counters.dropped.load(Ordering::Relaxed) < plan.connections
    {
        if opened.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "only {} of {} connections opened",
                counters.open.load(Ordering::Relaxed),
                plan.connections
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("soak: {} subscribers open", counters.open.load(Ordering::Relaxed));

    // Replacement: a steady trickle, `replace_per_minute` of all each minute.
    let per_second = plan.connections as f64 * plan.replace_per_minute / 60.0;
    let replacer = {
        let (connector, counters, names) = (connector.clone(), counters.clone(), names.clone());
        let urls = target.urls.clone();
        let total = plan.connections;
        tokio::spawn(async move {
            let mut stops = stops;
            let mut owed = 0.0;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                owed += per_second / 10.0;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let i = fastrand::u64(..total);
                    let fresh = spawn_subscriber(
                        connector.clone(),
                        urls[(i as usize) % urls.len()].clone(),
                        names[if i % broadcast_every == 0 {
                            broadcast
                        } else {
                            (i % regular) as usize
                        }]
                        .clone(),
                        counters.clone(),
                    );
                    let _ = std::mem::replace(&mut stops[i as usize], fresh).send(());
                    counters.replaced.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut publisher = Publisher::http(
        target.apis.clone(),
        target.api_key.clone(),
        names.clone(),
        64,
        wire::padding(100, true),
        1,
    );
    let total_rate = plan.rate + plan.broadcast_rate;
    let broadcast_share_of_publications = plan.broadcast_rate / total_rate.max(f64::MIN_POSITIVE);
    let mut report = SoakReport::default();
    let (mut published, mut failed) = (0, 0);
    let started = Instant::now();
    let mut n = 0u64;
    // The last sample falls at the end (a remainder under a second is
    // left out rather than sampled twice).
    while plan.duration.saturating_sub(started.elapsed()) >= Duration::from_secs(1) {
        let step = plan.sample.min(plan.duration.saturating_sub(started.elapsed()));
        let result = publisher
            .run(total_rate, step, |_| {
                n += 1;
                if fastrand::f64() < broadcast_share_of_publications {
                    broadcast
                } else {
                    (n % regular) as usize
                }
            })
            .await?;
        published += result.published;
        failed += result.failed;
        let mut sample = Sample {
            elapsed_secs: started.elapsed().as_secs_f64(),
            rss_bytes: target
                .pids
                .iter()
                .map(|&p| crate::procstat::rss_bytes(p).unwrap_or(0))
                .collect(),
            open_fds: target.pids.iter().map(|&p| open_fds(p)).collect(),
            redis_used_memory: match &plan.redis {
                Some(addr) => redis_memory(addr).await,
                None => None,
            },
            connections_open: counters.open.load(Ordering::Relaxed),
            replaced: counters.replaced.load(Ordering::Relaxed),
            received: counters.received.load(Ordering::Relaxed),
            lost: counters.lost.load(Ordering::Relaxed),
            duplicates: counters.duplicates.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            published,
            publish_failed: failed,
            ..Sample::default()
        };
        for api in &target.apis {
            sample.runtime_tasks.push(runtime_tasks(api).await);
        }
        eprintln!(
            "soak {:>5.0}s: rss {:?} MiB, fds {:?}, tasks {:?}, redis {:?} MiB, open {}, replaced {}, received {}, lost {}, dup {}, dropped {}",
            sample.elapsed_secs,
            sample.rss_bytes.iter().map(|b| b / (1 << 20)).collect::<Vec<_>>(),
            sample.open_fds,
            sample.runtime_tasks,
            sample.redis_used_memory.map(|b| b / (1 << 20)),
            sample.connections_open,
            sample.replaced,
            sample.received,
            sample.lost,
            sample.duplicates,
            sample.dropped
        );
        report.samples.push(sample);
    }
    replacer.abort();
    // Deliveries on their way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = report.samples.last().cloned().unwrap_or_default();
    let base = report
        .samples
        .iter()
        .find(|s| s.elapsed_secs >= plan.warmup.as_secs_f64())
        .cloned()
        .unwrap_or_else(|| report.samples.first().cloned().unwrap_or_default());
    let ratio = |end: &[u64], start: &[u64]| -> Vec<f64> {
        end.iter()
            .zip(start)
            .map(|(e, s)| *e as f64 / (*s).max(1) as f64)
            .collect()
    };
    report.rss_ratio = ratio(&last.rss_bytes, &base.rss_bytes);
    report.fds_ratio = ratio(&last.open_fds, &base.open_fds);
    report.within_bounds = report
        .rss_ratio
        .iter()
        .chain(&report.fds_ratio)
        .all(|r| *r <= 1.0 + plan.max_growth);
    report.clean = last.lost == 0 && last.duplicates == 0 && last.dropped == 0 && last.publish_failed == 0;
    eprintln!(
        "soak done: RSS end/after-warm-up {:?}, fds {:?} (bound {:.0}%), lost {}, dup {}, dropped {}, publish failures {}",
        report.rss_ratio,
        report.fds_ratio,
        plan.max_growth * 100.0,
        last.lost,
        last.duplicates,
        last.dropped,
        last.publish_failed
    );
    Ok(report)
}
