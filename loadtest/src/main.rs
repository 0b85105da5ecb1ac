//! `loadtest`: drives real WebSocket clients and publishers against gateway
//! nodes and reports what the nodes sustained. See docs/benchmarks.md for
//! the runs behind the published figures.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loadtest::report::Report;
use loadtest::scenario::{self, ChurnArgs, Pick, Publishing, Target};

#[derive(Parser)]
#[command(name = "loadtest", about = "Load generator for pubsub-gateway", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N connections (each subscribed), hold them, report server memory per connection.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        /// Channels the connections are spread over.
        #[arg(long, default_value_t = 1000)]
        channels: u64,
        /// How long to hold the connections once open.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        hold: Duration,
        /// After holding, publish one message to every channel (HTTP API) and count the
        /// connections that receive it: every open connection must.
        #[arg(long)]
        broadcast: bool,
        /// Name the channels in this namespace (`NS:idle-...`), for example one whose
        /// namespace keeps presence.
        #[arg(long, value_name = "NS")]
        namespace: Option<String>,
        /// After holding, this many `GET /api/presence/stats` on the first channel (16 in
        /// flight), for their latency and rate.
        #[arg(long, default_value_t = 0)]
        presence_reads: u64,
        /// Then this many `GET /api/presence` (the member list) on the first channel.
        #[arg(long, default_value_t = 0)]
        presence_list_reads: u64,
        /// Presence requests in flight at once.
        #[arg(long, default_value_t = 16)]
        presence_in_flight: usize,
    },
    /// N subscribers of one channel; publish at a rate, or ramp up to the highest sustainable rate.
    Fanout {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        publishing: Publishing,
        #[arg(long, default_value_t = 2000)]
        subscribers: u64,
    },
    /// N connections over M channels; publish to random channels at a rate.
    Channels {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        publishing: Publishing,
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        #[arg(long, default_value_t = 5_000)]
        channels: u64,
    },
    /// Clients connect, subscribe and leave at a rate while traffic flows to stable subscribers.
    Churn {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        publishing: Publishing,
        #[command(flatten)]
        churn: ChurnArgs,
        /// Stable subscribers (checked for loss).
        #[arg(long, default_value_t = 1000)]
        connections: u64,
        #[arg(long, default_value_t = 100)]
        channels: u64,
    },
    /// Light load, latency percentiles (point --url at one node and --api at another for cross-node).
    Latency {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        publishing: Publishing,
        #[arg(long, default_value_t = 1)]
        subscribers: u64,
    },
    /// A long churn run looking for leaks and loss: subscribers replaced at a steady rate, RSS,
    /// descriptors, tasks and Redis memory sampled each minute (docs/benchmarks.md, soak).
    Soak {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        soak: loadtest::soak::SoakArgs,
    },
    /// Latency of commands POSTed for an HTTP-streaming session, to its own node and to
    /// others (forwarded through the broker): from the POST to the reply on the stream.
    Forward {
        #[command(flatten)]
        args: loadtest::forward::ForwardArgs,
    },
    /// Render `--json` reports to SVG charts.
    Plot {
        /// Reports, each optionally named: `name=path.json`.
        #[arg(required = true)]
        reports: Vec<String>,
        /// Output path stem: writes STEM-ramp.svg and STEM-percentiles.svg.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// (internal) A worker process; the coordinator starts these.
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = match cli.scenario {
        Scenario::Worker => return loadtest::worker::main(),
        Scenario::Soak { .. } => return soak(cli.scenario),
        Scenario::Forward { args } => return forward(args),
        Scenario::Plot { reports, out } => return plot(&reports, &out),
        scenario => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run(scenario))?
        }
    };
    // Loss, duplicates or dropped connections fail the run, so scripts and
    // CI can rely on the exit status.
    if !report.clean() {
        eprintln!("run was not clean: lost, duplicated, failed or dropped (see above)");
        std::process::exit(1);
    }
    Ok(())
}

async fn run(scenario: Scenario) -> anyhow::Result<Report> {
    match scenario {
        Scenario::Idle {
            target,
            connections,
            channels,
            hold,
            broadcast,
            namespace,
            presence_reads,
            presence_list_reads,
            presence_in_flight,
        } => {
            let extra = scenario::IdleExtras {
                namespace,
                presence_reads,
                presence_list_reads,
                presence_in_flight,
            };
            scenario::idle(target, connections, channels, hold, broadcast, extra).await
        }
        Scenario::Fanout {
            target,
            publishing,
            subscribers,
        } => {
            scenario::traffic(
                "fanout",
                target,
                publishing,
                subscribers,
                1,
                Pick::RoundRobin,
                None,
            )
            .await
        }
        Scenario::Channels {
            target,
            publishing,
            connections,
            channels,
        } => {
            scenario::traffic(
                "channels",
                target,
                publishing,
                connections,
                channels,
                Pick::Random,
                None,
            )
            .await
        }
        Scenario::Churn {
            target,
            publishing,
            churn,
            connections,
            channels,
        } => {
            scenario::traffic(
                "churn",
                target,
                publishing,
                connections,
                channels,
                Pick::Random,
                Some(churn),
            )
            .await
        }
        Scenario::Latency {
            target,
            publishing,
            subscribers,
        } => {
            scenario::traffic(
                "latency",
                target,
                publishing,
                subscribers,
                1,
                Pick::RoundRobin,
                None,
            )
            .await
        }
        Scenario::Plot { .. } | Scenario::Worker | Scenario::Soak { .. } | Scenario::Forward { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// Runs the soak on a multi-threaded runtime (10,000 subscribers and a
/// publisher are more than one thread keeps up with) and fails unless it
/// was clean and within its growth bound.
fn soak(scenario: Scenario) -> anyhow::Result<()> {
    let Scenario::Soak { target, soak } = scenario else {
        anyhow::bail!("not a soak");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        let connector = loadtest::clients::Connector::new(target.client_options()?)?;
        let plan = loadtest::soak::SoakPlan {
            urls: target.urls.clone(),
            apis: target.apis.clone(),
            api_key: target.api_key.clone(),
            pids: target.pids.clone(),
            args: soak,
        };
        loadtest::soak::soak(plan, connector).await
    })?;
    if let Some(path) = &target.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if !(report.clean && report.within_bounds) {
        eprintln!("soak failed: lost, duplicated, dropped or grew beyond the bound (see above)");
        std::process::exit(1);
    }
    Ok(())
}

/// Prints, per POST target, the latency from a POSTed command to its reply.
fn forward(args: loadtest::forward::ForwardArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = args.stream.clone();
    let forwarded = runtime.block_on(loadtest::forward::run(args))?;
    println!(
        "session on {stream}; POST /stream/commands (ping) to each node, time to the pong on the stream:"
    );
    println!(
        "{:>28} {:>7} {:>8} {:>8} {:>8} {:>8} | POST answer: {:>8} {:>8}",
        "POST to", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 ms", "p99 ms"
    );
    for (target, p, answer) in &forwarded.results {
        println!(
            "{target:>28} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.3} | {:>21.3} {:>8.3}",
            p.count, p.p50, p.p90, p.p99, p.max, answer.p50, answer.p99
        );
    }
    Ok(())
}

fn plot(reports: &[String], out: &std::path::Path) -> anyhow::Result<()> {
    let mut loaded = Vec::new();
    for spec in reports {
        let (name, path) = match spec.split_once('=') {
            Some((name, path)) => (name.to_owned(), PathBuf::from(path)),
            None => {
                let path = PathBuf::from(spec);
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, path)
            }
        };
        loaded.push((name, Report::read_json(&path)?));
    }
    for path in loadtest::plot::plot(&loaded, out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
