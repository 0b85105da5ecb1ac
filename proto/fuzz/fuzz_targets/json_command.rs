//! Fuzz target: see `pubsub_proto::properties::json_command`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pubsub_proto::properties::json_command(data));
