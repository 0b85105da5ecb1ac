//! The `gateway` binary: read the configuration, serve until SIGTERM or
//! SIGINT, drain, exit 0. A second signal during the drain exits at once.
//! SIGHUP reloads the TLS certificate and key, and the token keys. `--print-config` and
//! `--healthcheck` do their one thing and exit.

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the publish and fan-out paths
/// allocate many small, short-lived buffers from several threads, where
/// glibc's malloc spent a tenth of the node's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use gateway::config::{Action, Config};
use gateway::{Gateway, healthcheck, logging};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let (config, action) = match Config::load(std::env::args_os()) {
        Ok(loaded) => loaded,
        Err(gateway::config::ConfigError::Flags(error)) => {
            // --help and --version end here too, with exit code 0.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(error) => {
            eprintln!("gateway: {error}");
            return ExitCode::from(2);
        }
    };
    match action {
        Action::Serve => {}
        Action::PrintConfig => {
            print!("{}", config.to_toml());
            return ExitCode::SUCCESS;
        }
        Action::Healthcheck(url) => {
            let url = url.unwrap_or_else(|| healthcheck::default_url(&config));
            return match healthcheck::check(&url, Duration::from_secs(3)) {
                Ok(200) => ExitCode::SUCCESS,
                Ok(status) => {
                    eprintln!("gateway: {url} answered {status}");
                    ExitCode::FAILURE
                }
                Err(error) => {
                    eprintln!("gateway: {error}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    logging::init(&config);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        builder.worker_threads(config.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gateway: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

/// SIGHUP: the TLS pair and the token keys are read again; what fails to
/// load keeps what is in use.
fn reload(gateway: &Gateway) {
    let node = gateway.node();
    if node.security.tls.is_some() {
        match gateway.reload_tls() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(error) => tracing::warn!(%error, "SIGHUP: TLS certificate not reloaded"),
        }
    }
    if node.security.auth.is_some() {
        match gateway.reload_auth() {
            Ok(keys) => tracing::info!(keys, "SIGHUP: token keys reloaded"),
            Err(error) => tracing::warn!(%error, "SIGHUP: token keys not reloaded; the old ones stay in use"),
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    let (mut terminate, mut interrupt, mut hangup) = match signals {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            eprintln!("gateway: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let listen = config.listen;
    let gateway = match Gateway::start(config).await {
        Ok(gateway) => gateway,
        Err(error) => {
            tracing::error!(%error, %listen, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => { tracing::info!("SIGTERM: draining"); break }
            _ = interrupt.recv() => { tracing::info!("SIGINT: draining"); break }
            _ = hangup.recv() => reload(&gateway),
        }
    }
    tokio::select! {
        _ = gateway.drain() => ExitCode::SUCCESS,
        _ = terminate.recv() => { tracing::warn!("second signal: exiting without finishing the drain"); ExitCode::from(130) }
        _ = interrupt.recv() => { tracing::warn!("second signal: exiting without finishing the drain"); ExitCode::from(130) }
    }
}
