//! `loadtest idle`: how much server memory an idle connection costs.
//!
//! Opens N connections (each subscribed to one of M channels), waits for the
//! server to settle, and reports the growth of the gateway's RSS divided by
//! N. Every client keeps reading so that it answers the server's pings.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Semaphore;

use crate::{clients, procstat};
use clients::connect_and_subscribe;

#[derive(clap::Args)]
pub struct Args {
    /// WebSocket URL of the gateway.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// PID of the gateway process, to read its memory.
    #[arg(long)]
    pid: u32,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Channels the connections are spread over.
    #[arg(long, default_value_t = 1000)]
    channels: usize,
    /// Connections opened in parallel.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// How long to hold the connections after they are all open.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Loopback source addresses to spread connections over (comma-separated).
    #[arg(long, default_value = "")]
    sources: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let sources = clients::parse_sources(&args.sources)?;
    let before = procstat::rss_bytes(args.pid)?;
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = permits.clone().acquire_owned().await?;
        let url = args.url.clone();
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let channel = format!("idle-{}", i % args.channels.max(1));
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            match connect_and_subscribe(&url, source, &channel).await {
                Ok(ws) => {
                    drop(permit);
                    // Keep reading: answers pings, notices a close.
                    let (_, mut read) = ws.split();
                    while let Some(Ok(_)) = read.next().await {}
                }
                Err(error) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("connect failed: {error}");
                    }
                }
            }
        }));
    }
    // Wait until every connect finished (permits all returned).
    let _all = permits.acquire_many(args.concurrency as u32).await?;
    let connect_time = started.elapsed();
    let open = args.connections - failed.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = procstat::rss_bytes(args.pid)?;
    let per_connection = after.saturating_sub(before) as f64 / open.max(1) as f64;
    println!("connections open:        {open} of {}", args.connections);
    println!(
        "connect+subscribe:       {:.2}s ({:.0}/s)",
        connect_time.as_secs_f64(),
        open as f64 / connect_time.as_secs_f64()
    );
    println!("gateway RSS before:      {:.1} MiB", before as f64 / 1048576.0);
    println!("gateway RSS after:       {:.1} MiB", after as f64 / 1048576.0);
    println!(
        "RSS per idle connection: {:.0} bytes ({:.2} KiB)",
        per_connection,
        per_connection / 1024.0
    );
    tokio::time::sleep(args.hold).await;
    for task in tasks {
        task.abort();
    }
    Ok(())
}
