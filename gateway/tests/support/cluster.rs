//! Real Redis Clusters for the tests (shared with broker-adapter's
//! conformance suite).
#![allow(unused_imports)]

pub use broker_adapter::testing::cluster::{RedisCluster, keyslot};
