//! Fuzz target: see `pubsub_proto::properties::channel_name`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pubsub_proto::properties::channel_name(data));
