//! The `gateway` binary: read the configuration, serve until SIGTERM or
//! SIGINT, drain, exit 0. A second signal during the drain exits at once.

use std::process::ExitCode;

use clap::Parser;
use gateway::config::{Cli, Config};
use gateway::{Gateway, logging};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_cli(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("gateway: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    logging::init(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let (mut terminate, mut interrupt) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                eprintln!("gateway: cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
    let listen = config.listen;
    let gateway = match Gateway::start(config).await {
        Ok(gateway) => gateway,
        Err(error) => {
            tracing::error!(%error, %listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
        _ = interrupt.recv() => tracing::info!("SIGINT: draining"),
    }
    tokio::select! {
        _ = gateway.drain() => ExitCode::SUCCESS,
        _ = terminate.recv() => { tracing::warn!("second signal: exiting without finishing the drain"); ExitCode::from(130) }
        _ = interrupt.recv() => { tracing::warn!("second signal: exiting without finishing the drain"); ExitCode::from(130) }
    }
}
