//! The load generator's parts. The `loadtest` binary is a thin command line
//! over [`scenario`]. The loss and duplication checker the gateway's fault
//! tests use is its own crate, `loss-checker` (`loadtest/checker/`).
//!
//! Data flows: [`scenario`] asks [`fleet`] for worker processes
//! ([`worker`]), each opening WebSocket [`clients`] that read [`wire`]
//! frames; [`publisher`] publishes probes on a schedule; per-step counts and
//! latency histograms come back as a [`report`], which [`plot`] can chart.

pub mod clients;
pub mod fleet;
pub mod forward;
pub mod plot;
pub mod presence;
pub mod procstat;
pub mod publisher;
pub mod report;
pub mod scenario;
pub mod soak;
pub mod sse;
pub mod wire;
pub mod worker;
