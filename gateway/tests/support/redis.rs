//! Real Redis servers for the tests (shared with broker-adapter's
//! conformance suite).
#![allow(unused_imports)]

pub use broker_adapter::testing::server::{RedisServer, free_port};
