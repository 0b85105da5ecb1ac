//! A worker process: holds a slice of the run's connections.
//!
//! One process may hold at most 20,000 open files on the machines this runs
//! on, and one core is all a single-threaded reader needs, so the
//! coordinator spreads connections over `loadtest worker` processes, each
//! bound to its own loopback source address. A worker reads its [`Job`] as
//! the first line of stdin, then obeys one-word commands (`count`, `step`,
//! `churn`, `stop`) and answers each with one JSON line on stdout.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Semaphore;

use crate::clients::{ClientOptions, Connector};
use crate::report::Latency;
use crate::wire::{self, Frame};

/// What a worker is asked to hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub client: ClientOptions,
    /// Connection `i` (global index) goes to one of these (see [`Job::url`])...
    pub urls: Vec<String>,
    pub source: Option<IpAddr>,
    /// ... and this worker holds `first .. first + count`.
    pub first: u64,
    pub count: u64,
    /// Connection `i` subscribes to `{channel_prefix}{i % channels}`.
    pub channel_prefix: String,
    pub channels: u64,
    /// Connects in flight at once.
    pub concurrency: usize,
    /// Churn: extra short-lived clients, per second, from this worker.
    pub churn_rate: f64,
    pub churn_hold_ms: u64,
}

impl Job {
    /// The node of connection `i`. Connection `i` is subscriber number
    /// `i / channels` of channel `i % channels`; their sum, round robin,
    /// spreads each channel's subscribers over the nodes and balances the
    /// nodes.
    pub fn url(&self, i: u64) -> &str {
        let channels = self.channels.max(1);
        let turn = i % channels + i / channels;
        &self.urls[(turn % self.urls.len() as u64) as usize]
    }

    pub fn channel(&self, i: u64) -> String {
        format!("{}{}", self.channel_prefix, i % self.channels.max(1))
    }
}

/// A worker's answers, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// While connecting, every quarter second.
    Progress { connected: u64, failed: u64 },
    /// All connects finished.
    Ready {
        connected: u64,
        failed: u64,
        connect_secs: f64,
        /// (channel index, open subscribers) for channels with any.
        subscribers: Vec<(u64, u64)>,
        errors: Vec<String>,
    },
    /// Answer to `count`: probes received so far.
    Count { received: u64 },
    /// Answer to `step`: everything since the previous step, then reset.
    Step(StepCounts),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StepCounts {
    pub received: u64,
    pub duplicates: u64,
    pub disconnects: u64,
    pub latency: Vec<(u64, u64)>,
    pub churn_cycles: u64,
    pub churn_failed: u64,
    pub churn_connect: Vec<(u64, u64)>,
}

#[derive(Default)]
struct Stats {
    received: u64,
    duplicates: u64,
    disconnects: u64,
    latency: Latency,
    churn_cycles: u64,
    churn_failed: u64,
    churn_connect: Latency,
}

/// Duplicate detection for one subscription: the highest sequence number
/// seen and a bitmap of the 128 below it (publications sent concurrently
/// may arrive slightly out of order; anything older counts as new).
#[derive(Default)]
struct Window {
    max: Option<u64>,
    seen: u128,
}

impl Window {
    /// True when `seq` was already seen.
    fn duplicate(&mut self, seq: u64) -> bool {
        let Some(max) = self.max else {
            self.max = Some(seq);
            return false;
        };
        if seq > max {
            let shift = seq - max;
            self.seen = if shift >= 128 {
                0
            } else {
                (self.seen << shift) | (1 << (shift - 1))
            };
            self.max = Some(seq);
            false
        } else if seq == max {
            true
        } else {
            let back = max - seq;
            if back > 128 {
                return false;
            }
            let bit = 1u128 << (back - 1);
            let seen = self.seen & bit != 0;
            self.seen |= bit;
            seen
        }
    }
}

fn answer(answer: &Answer) {
    let mut out = std::io::stdout().lock();
    // The coordinator reads line by line; a broken pipe means it is gone.
    if serde_json::to_writer(&mut out, answer).is_err() || writeln!(out).is_err() || out.flush().is_err() {
        std::process::exit(1);
    }
}

/// Runs a worker until `stop` (or until stdin closes).
pub fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let line = stdin
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no job on stdin"))?;
    let job: Job = serde_json::from_str(&line)?;
    let connector = Connector::new(job.client.clone())?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(job.concurrency.max(1)));
    let connected = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let subscribers = Arc::new(Mutex::new(BTreeMap::<u64, u64>::new()));
    let progress = tokio::spawn({
        let (connected, failed) = (connected.clone(), failed.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                answer(&Answer::Progress {
                    connected: connected.load(std::sync::atomic::Ordering::Relaxed),
                    failed: failed.load(std::sync::atomic::Ordering::Relaxed),
                });
            }
        }
    });
    for i in job.first..job.first + job.count {
        let permit = permits.clone().acquire_owned().await?;
        let url = job.url(i).to_owned();
        let channel = job.channel(i);
        let channel_index = i % job.channels.max(1);
        let (connector, stats, stopping) = (connector.clone(), stats.clone(), stopping.clone());
        let (connected, failed, errors, subscribers) = (
            connected.clone(),
            failed.clone(),
            errors.clone(),
            subscribers.clone(),
        );
        let source = job.source;
        tokio::spawn(async move {
            match connector.subscribe(&url, source, &channel).await {
                Ok(ws) => {
                    *subscribers.lock().entry(channel_index).or_default() += 1;
                    connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(permit);
                    read(ws, connector.protocol(), &stats, &stopping).await;
                }
                Err(error) => {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut errors = errors.lock();
                    if errors.len() < 5 {
                        errors.push(format!("{url}: {error}"));
                    }
                }
            }
        });
    }
    // Every connect finished once every permit is back.
    let _all = permits.acquire_many(job.concurrency.max(1) as u32).await?;
    progress.abort();
    answer(&Answer::Ready {
        connected: connected.load(std::sync::atomic::Ordering::Relaxed),
        failed: failed.load(std::sync::atomic::Ordering::Relaxed),
        connect_secs: started.elapsed().as_secs_f64(),
        subscribers: subscribers.lock().iter().map(|(&c, &n)| (c, n)).collect(),
        errors: errors.lock().clone(),
    });

    while let Some(line) = stdin.next_line().await? {
        match line.trim() {
            "count" => answer(&Answer::Count {
                received: stats.lock().received,
            }),
            "step" => {
                let step = std::mem::take(&mut *stats.lock());
                answer(&Answer::Step(StepCounts {
                    received: step.received,
                    duplicates: step.duplicates,
                    disconnects: step.disconnects,
                    latency: step.latency.buckets(),
                    churn_cycles: step.churn_cycles,
                    churn_failed: step.churn_failed,
                    churn_connect: step.churn_connect.buckets(),
                }));
            }
            "churn" if job.churn_rate > 0.0 => {
                tokio::spawn(churn(
                    job.clone(),
                    connector.clone(),
                    stats.clone(),
                    stopping.clone(),
                ));
            }
            "stop" => break,
            other => anyhow::bail!("unknown worker command {other:?}"),
        }
    }
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Reads a subscription until the connection ends, recording probes.
async fn read(
    mut subscription: crate::clients::Subscription,
    protocol: wire::Protocol,
    stats: &Mutex<Stats>,
    stopping: &std::sync::atomic::AtomicBool,
) {
    let mut window = Window::default();
    loop {
        let frame = subscription.next(protocol).await;
        match frame {
            Frame::Probe { seq, sent_micros } => {
                let latency = wire::now_micros().saturating_sub(sent_micros);
                let duplicate = window.duplicate(seq);
                let mut stats = stats.lock();
                if duplicate {
                    stats.duplicates += 1;
                } else {
                    stats.received += 1;
                    stats.latency.record(latency);
                }
            }
            Frame::Closed => {
                if !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    stats.lock().disconnects += 1;
                }
                return;
            }
            _ => {}
        }
    }
}

/// Short-lived clients: connect, subscribe, hold, leave; at `churn_rate`/s.
async fn churn(
    job: Job,
    connector: Connector,
    stats: Arc<Mutex<Stats>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) {
    let interval = Duration::from_secs_f64(1.0 / job.churn_rate);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
        ticker.tick().await;
        n += 1;
        let url = job.urls[(n % job.urls.len() as u64) as usize].clone();
        // Churning clients join the stable clients' channels, so the hub
        // adds and removes subscribers of busy channels while traffic flows.
        let channel = job.channel(job.first + n);
        let (connector, stats, source) = (connector.clone(), stats.clone(), job.source);
        let hold = Duration::from_millis(job.churn_hold_ms);
        tokio::spawn(async move {
            let started = Instant::now();
            match connector.subscribe(&url, source, &channel).await {
                Ok(mut subscription) => {
                    stats
                        .lock()
                        .churn_connect
                        .record(started.elapsed().as_micros() as u64);
                    // Keep reading while held, as a real client would.
                    let protocol = connector.protocol();
                    let _ = tokio::time::timeout(hold, async {
                        while !matches!(subscription.next(protocol).await, Frame::Closed) {}
                    })
                    .await;
                    subscription.close().await;
                    stats.lock().churn_cycles += 1;
                }
                Err(_) => stats.lock().churn_failed += 1,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{Job, Window};

    #[test]
    fn subscribers_of_a_channel_are_spread_over_the_nodes() {
        let job = |channels| Job {
            client: Default::default(),
            urls: vec!["a".into(), "b".into()],
            source: None,
            first: 0,
            count: 0,
            channel_prefix: String::new(),
            channels,
            concurrency: 1,
            churn_rate: 0.0,
            churn_hold_ms: 0,
        };
        let many = job(5000);
        for c in [0, 1, 4999] {
            assert_ne!(many.url(c), many.url(c + 5000), "channel {c}");
        }
        let a = (0..10_000).filter(|&i| many.url(i) == "a").count();
        assert_eq!(a, 5000);
        let one = job(1);
        assert_eq!((one.url(0), one.url(1), one.url(2)), ("a", "b", "a"));
    }

    #[test]
    fn the_window_finds_duplicates_in_and_out_of_order() {
        let mut w = Window::default();
        for seq in [1, 2, 4, 3] {
            assert!(!w.duplicate(seq), "{seq} is new");
        }
        for seq in [1, 2, 3, 4] {
            assert!(w.duplicate(seq), "{seq} was seen");
        }
        assert!(!w.duplicate(1000));
        assert!(!w.duplicate(999));
        assert!(w.duplicate(999));
        assert!(w.duplicate(1000));
    }
}
