//! `loadtest`: drives real WebSocket clients and HTTP publishers against
//! gateway nodes and reports what the nodes sustained.
//!
//! Scenarios:
//! - `idle`: open N connections (each subscribed to a channel), hold them,
//!   and report the gateway's memory per connection from its PID;
//! - `fanout`: N subscribers of one channel, publish over HTTP at a rate,
//!   report deliveries/s, loss and latency percentiles, and the CPU time of
//!   the gateway and of this generator.

mod fanout;
mod idle;

use loadtest::{clients, procstat};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadtest", about = "Load generator for pubsub-gateway")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N idle (subscribed) connections and report server memory per connection.
    Idle(idle::Args),
    /// N subscribers of one channel; publish over HTTP at a rate.
    Fanout(fanout::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.scenario {
            Scenario::Idle(args) => idle::run(args).await,
            Scenario::Fanout(args) => fanout::run(args).await,
        }
    })
}
