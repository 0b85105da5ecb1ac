//! For tests (feature `testing`): real Redis servers and clusters on free
//! loopback ports, and the broker conformance suite. The gateway's own
//! tests use the same servers.

pub mod cluster;
pub mod conformance;
pub mod operations;
pub mod presence;
pub mod server;
