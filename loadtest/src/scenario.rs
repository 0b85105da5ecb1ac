//! The scenarios: what to open, what to publish, what to report.
//!
//! Every scenario opens its connections through worker processes
//! ([`crate::fleet`]), then runs zero or more measurement steps: publish at
//! a rate for a duration ([`crate::publisher`]), wait for the deliveries,
//! and collect loss, duplicates, disconnects, latency and CPU per step.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::clients::{ClientOptions, Connector, Transport};
use crate::fleet::{Fleet, Plan};
use crate::procstat;
use crate::publisher::Publisher;
use crate::report::{Churn, Memory, Report, Step};
use crate::wire::{self, Protocol};
use crate::worker::Job;

/// Where the gateway is and how clients reach it.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// WebSocket URLs; clients are spread over them (comma-separated or repeated).
    #[arg(long = "url", value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    pub urls: Vec<String>,
    /// HTTP API base URLs to publish through, round robin.
    #[arg(long = "api", value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    pub apis: Vec<String>,
    /// API key for the HTTP API.
    #[arg(long, env = "LOADTEST_API_KEY")]
    pub api_key: Option<String>,
    /// Subprotocol of every client.
    #[arg(long, value_enum, default_value = "json")]
    pub protocol: Protocol,
    /// Client token, sent as `Authorization: Bearer` with the upgrade.
    #[arg(long, env = "LOADTEST_TOKEN", conflicts_with = "jwt_secret")]
    pub token: Option<String>,
    /// Mint client tokens (HS256, all channels) with this secret.
    #[arg(long, env = "LOADTEST_JWT_SECRET")]
    pub jwt_secret: Option<String>,
    /// CA certificate (PEM) for `wss://` URLs.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Accept any certificate on `wss://` (test nodes with self-signed certificates).
    #[arg(long)]
    pub insecure: bool,
    /// Offer permessage-deflate on every connection, as browsers do (and compress what
    /// clients send when the gateway accepts).
    #[arg(long)]
    pub compression: bool,
    /// How subscribers connect: WebSocket, or Server-Sent Events (`GET /sse` on the URL's
    /// host, JSON; publishing stays on the HTTP API or WebSocket).
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: Transport,
    /// PIDs of the gateway processes, for their memory and CPU time (comma-separated).
    #[arg(long = "pid", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Source addresses for the workers, in turn (default on loopback: 127.0.0.2, .3, ...).
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<IpAddr>,
    /// Connections per worker process at most (below the open-files limit).
    #[arg(long, default_value_t = 15_000)]
    pub per_worker: u64,
    /// Worker processes at least.
    #[arg(long, default_value_t = 1)]
    pub workers: u64,
    /// Connects in flight per worker.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Write the machine-readable report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Target {
    pub fn client_options(&self) -> anyhow::Result<ClientOptions> {
        let token = match (&self.token, &self.jwt_secret) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(secret)) => Some(mint_token(secret)?),
            (None, None) => None,
        };
        Ok(ClientOptions {
            protocol: self.protocol,
            token,
            ca: self.ca.clone(),
            insecure: self.insecure,
            compression: self.compression,
            transport: self.transport,
        })
    }

    fn plan(
        &self,
        connections: u64,
        channels: u64,
        prefix: &str,
        churn: Option<&ChurnArgs>,
    ) -> anyhow::Result<Plan> {
        anyhow::ensure!(!self.urls.is_empty(), "give at least one --url");
        Ok(Plan {
            template: Job {
                client: self.client_options()?,
                urls: self.urls.clone(),
                source: None,
                first: 0,
                count: 0,
                channel_prefix: prefix.to_owned(),
                channels,
                concurrency: self.concurrency,
                churn_rate: 0.0,
                churn_hold_ms: churn.map(|c| c.hold.as_millis() as u64).unwrap_or(0),
            },
            connections,
            per_worker: self.per_worker,
            min_workers: self.workers,
            sources: self.sources.clone(),
        })
    }

    fn server_cpu(&self) -> Option<Duration> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids
            .iter()
            .map(|p| procstat::cpu_time(&p.to_string()).ok())
            .sum()
    }

    fn server_rss(&self) -> anyhow::Result<u64> {
        self.pids.iter().map(|&p| procstat::rss_bytes(p)).sum()
    }

    fn finish(&self, report: &Report) -> anyhow::Result<()> {
        report.print();
        if let Some(path) = &self.json {
            report.write_json(path)?;
            eprintln!("report written to {}", path.display());
        }
        Ok(())
    }
}

/// A token any of the run's clients may use: all channels, 24 hours.
fn mint_token(secret: &str) -> anyhow::Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 86_400;
    let claims = serde_json::json!({"sub": "loadtest", "exp": exp, "channels": ["*"], "publish": ["*"]});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// How publications are made.
#[derive(clap::Args, Clone, Debug)]
pub struct Publishing {
    /// Publications per second (the first step's, when ramping).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long each step publishes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Padding bytes in each publication.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Pad with a realistic JSON event of about `--payload` bytes instead of `x`s (for
    /// compression figures).
    #[arg(long)]
    pub event: bool,
    /// Publish through the HTTP API or through WebSocket clients.
    #[arg(long, value_enum, default_value = "http")]
    pub publish_via: Via,
    /// Publishing WebSocket connections (`--publish-via ws`).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Where the publishing WebSocket clients connect (`--publish-via ws`; comma-separated)
    /// [default: the --url list]. For cross-node latency, another node than the subscribers'.
    #[arg(long = "publish-url", value_delimiter = ',')]
    pub publish_urls: Vec<String>,
    /// Requests in flight at once (HTTP), or publications (WebSocket).
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// With `--publish-via http`: publications per request, through `POST /api/batch` (a
    /// batch is sent when full, or 2 ms after its first publication was due) [1: one
    /// `POST /api/publish` each].
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Ramp: multiply the rate by this after each step that kept up, until one
    /// does not (p99 above --max-p99, loss, or deliveries falling behind).
    #[arg(long)]
    pub ramp: Option<f64>,
    /// The latency bound a step must keep to count as sustained.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub max_p99: Duration,
    /// Steps at most when ramping.
    #[arg(long, default_value_t = 12)]
    pub max_steps: usize,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Via {
    Http,
    Ws,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ChurnArgs {
    /// Short-lived clients per second (connect, subscribe, hold, close), over all workers.
    #[arg(long, default_value_t = 200.0)]
    pub churn_rate: f64,
    /// How long each short-lived client stays.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_report(scenario: &str) -> Report {
    Report {
        scenario: scenario.to_owned(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_unix: unix_now(),
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        ..Report::default()
    }
}

/// `idle`: open, hold, report memory per connection; with `broadcast`,
/// then publish once to every channel and count who received it.
/// The idle scenario's optional parts.
#[derive(Default)]
pub struct IdleExtras {
    /// Channels are `<namespace>:idle-...`.
    pub namespace: Option<String>,
    /// Presence stats reads on the first channel after holding.
    pub presence_reads: u64,
    /// Then member-list reads.
    pub presence_list_reads: u64,
    /// Presence requests in flight at once.
    pub presence_in_flight: usize,
}

pub async fn idle(
    target: Target,
    connections: u64,
    channels: u64,
    hold: Duration,
    broadcast: bool,
    extras: IdleExtras,
) -> anyhow::Result<Report> {
    let mut report = new_report("idle");
    let rss_before = (!target.pids.is_empty())
        .then(|| target.server_rss())
        .transpose()?;
    let prefix = match &extras.namespace {
        Some(ns) => format!("{ns}:idle-{}-", unix_now()),
        None => format!("idle-{}-", unix_now()),
    };
    let plan = target.plan(connections, channels, &prefix, None)?;
    let (mut fleet, opened) = Fleet::start(&plan).await?;
    report.connections = opened;
    // Let the server settle (buffers shrink, allocator returns pages).
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(before) = rss_before {
        let after = target.server_rss()?;
        report.memory = Some(Memory {
            rss_before: before,
            rss_after: after,
            per_connection_bytes: after.saturating_sub(before) as f64 / report.connections.open.max(1) as f64,
        });
    }
    tokio::time::sleep(hold).await;
    // Connections that dropped while held.
    let (counts, _, _) = fleet.step().await?;
    report.connections.dropped = counts.disconnects;
    for (what, count) in [
        ("presence/stats", extras.presence_reads),
        ("presence", extras.presence_list_reads),
    ] {
        if count > 0 {
            let path = format!("/api/{what}?channel={prefix}0");
            let reads = crate::presence::run(
                &target.apis,
                target.api_key.as_deref(),
                &path,
                count,
                extras.presence_in_flight,
            )
            .await?;
            let p = reads.latency.summary();
            eprintln!(
                "GET /api/{what}: {} answered, {} failed, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; last: {}",
                p.count, reads.failed, reads.per_second, p.p50, p.p99, p.max, reads.last
            );
        }
    }
    if broadcast {
        let names: Vec<String> = (0..channels).map(|c| format!("{prefix}{c}")).collect();
        let mut publisher = Publisher::http(
            target.apis.clone(),
            target.api_key.clone(),
            names,
            64,
            wire::padding(16, false),
            1,
        );
        let started = Instant::now();
        // One publication per channel, within a second.
        let published = publisher
            .run(channels as f64, Duration::from_secs(1), |n| n as usize)
            .await?;
        let expected: u64 = published
            .acked
            .iter()
            .enumerate()
            .map(|(c, &n)| n * fleet.subscribers_of(c as u64))
            .sum();
        fleet.drain(expected, Duration::from_secs(10)).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let (counts, latency, _) = fleet.step().await?;
        eprintln!(
            "broadcast: {} of {expected} connections received it, p99 {:.1} ms",
            counts.received,
            latency.summary().p99
        );
        report.steps.push(measured(
            channels as f64,
            elapsed,
            &published,
            expected,
            &counts,
            &latency,
        ));
    }
    fleet.stop().await?;
    target.finish(&report)?;
    Ok(report)
}

/// A step's delivery figures: what was published at `rate`, expected and
/// received over `elapsed` seconds (the drain included: a backlog lowers the
/// rate). CPU figures are the caller's to add.
fn measured(
    rate: f64,
    elapsed: f64,
    published: &crate::publisher::Published,
    expected: u64,
    counts: &crate::worker::StepCounts,
    latency: &crate::report::Latency,
) -> Step {
    Step {
        publish_rate: rate,
        duration_secs: elapsed,
        published: published.published,
        publish_failed: published.failed,
        expected,
        received: counts.received,
        lost: expected.saturating_sub(counts.received),
        duplicates: counts.duplicates,
        disconnects: counts.disconnects,
        deliveries_per_sec: counts.received as f64 / elapsed,
        latency: latency.summary(),
        publish_round_trip: published.round_trip.summary(),
        ..Step::default()
    }
}

/// How publications pick their channel.
#[derive(Clone, Copy)]
pub enum Pick {
    /// Publication n goes to channel n mod channels.
    RoundRobin,
    /// A uniformly random channel.
    Random,
}

/// A traffic run: `connections` subscribers over `channels` channels, then
/// publishing steps; `churn` adds short-lived clients meanwhile.
pub async fn traffic(
    name: &str,
    target: Target,
    publishing: Publishing,
    connections: u64,
    channels: u64,
    pick: Pick,
    churn: Option<ChurnArgs>,
) -> anyhow::Result<Report> {
    let mut report = new_report(name);
    let prefix = format!("{name}-{}-", unix_now());
    let mut plan = target.plan(connections, channels, &prefix, churn.as_ref())?;
    if let Some(c) = &churn {
        let workers = plan.jobs().len() as f64;
        plan.template.churn_rate = c.churn_rate / workers;
    }
    let (mut fleet, opened) = Fleet::start(&plan).await?;
    report.connections = opened;
    let names: Vec<String> = (0..channels).map(|c| format!("{prefix}{c}")).collect();
    let mut publisher = match publishing.publish_via {
        Via::Http => Publisher::http(
            target.apis.clone(),
            target.api_key.clone(),
            names,
            publishing.in_flight,
            wire::padding(publishing.payload, publishing.event),
            publishing.batch,
        ),
        Via::Ws => {
            let connector = Connector::new(target.client_options()?)?;
            let urls = if publishing.publish_urls.is_empty() {
                &target.urls
            } else {
                &publishing.publish_urls
            };
            Publisher::ws(
                connector,
                urls,
                publishing.publishers,
                names,
                publishing.in_flight,
                wire::padding(publishing.payload, publishing.event),
            )
            .await?
        }
    };
    // Forget the connect phase: steps start from zero.
    fleet.step().await?;
    if churn.is_some() {
        fleet.churn().await?;
    }
    let mut churn_report = churn.as_ref().map(|_| Churn::default());
    let mut churn_latency = crate::report::Latency::default();
    let churn_started = Instant::now();
    let mut rate = publishing.rate;
    let steps = if publishing.ramp.is_some() {
        publishing.max_steps
    } else {
        1
    };
    for _ in 0..steps {
        let server_before = target.server_cpu();
        let generator_before = procstat::cpu_time("self")? + fleet.cpu();
        let started = Instant::now();
        let published = publisher
            .run(rate, publishing.duration, |n| match pick {
                Pick::RoundRobin => (n % channels.max(1)) as usize,
                Pick::Random => fastrand::usize(..channels.max(1) as usize),
            })
            .await?;
        let expected: u64 = published
            .acked
            .iter()
            .enumerate()
            .map(|(c, &n)| n * fleet.subscribers_of(c as u64))
            .sum();
        // Deliveries still on their way belong to this step.
        let patience = (publishing.max_p99 * 3).max(Duration::from_secs(2));
        fleet.drain(expected, patience).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let (counts, latency, churn_connect) = fleet.step().await?;
        churn_latency.merge(&churn_connect);
        if let Some(c) = churn_report.as_mut() {
            c.cycles += counts.churn_cycles;
            c.failed += counts.churn_failed;
        }
        let server_cpu = match (server_before, target.server_cpu()) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before).as_secs_f64()),
            _ => None,
        };
        let generator_cpu = (procstat::cpu_time("self")? + fleet.cpu()).saturating_sub(generator_before);
        let step = Step {
            server_cpu_secs: server_cpu,
            generator_cpu_secs: generator_cpu.as_secs_f64(),
            server_cpu_per_million: server_cpu.map(|s| s / (counts.received.max(1) as f64 / 1e6)),
            ..measured(rate, elapsed, &published, expected, &counts, &latency)
        };
        eprintln!(
            "step {:.0}/s: {:.0} deliveries/s, p99 {:.2} ms, lost {}, dup {}",
            rate, step.deliveries_per_sec, step.latency.p99, step.lost, step.duplicates
        );
        let kept_up = step.lost == 0
            && step.publish_failed == 0
            && step.latency.p99 <= publishing.max_p99.as_secs_f64() * 1000.0
            && step.published as f64 >= 0.95 * rate * publishing.duration.as_secs_f64();
        let deliveries = step.deliveries_per_sec;
        report.steps.push(step);
        if publishing.ramp.is_some() {
            if !kept_up {
                break;
            }
            report.sustainable_deliveries_per_sec = Some(deliveries);
        }
        rate *= publishing.ramp.unwrap_or(1.0);
    }
    if let Some(mut c) = churn_report {
        c.cycles_per_sec = c.cycles as f64 / churn_started.elapsed().as_secs_f64();
        c.connect_latency = churn_latency.summary();
        report.churn = Some(c);
    }
    fleet.stop().await?;
    target.finish(&report)?;
    Ok(report)
}
