//! Turns `docs/openapi.yaml` into the JSON the node serves at
//! `GET /api/openapi.json` (see `src/openapi.rs`), and generates the gRPC
//! server API (`proto/pubsub/v1/api.proto`, compiled with protox: no system
//! protoc) for `src/grpc/`.

use std::path::PathBuf;

fn main() {
    grpc();
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml");
    println!("cargo:rerun-if-changed={}", source.display());
    let text =
        std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let document: serde_json::Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", source.display()));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("openapi.json");
    let json = serde_json::to_string(&document).expect("JSON");
    std::fs::write(&out, json).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

fn grpc() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let file = root.join("pubsub/v1/api.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("pubsub/v1/protocol.proto").display()
    );
    let descriptors = protox::compile([&file], [&root]).unwrap_or_else(|e| panic!("api.proto: {e}"));
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".")
        // The client protocol's messages are pubsub-proto's.
        .extern_path(".pubsub.v1", "::pubsub_proto::pb")
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("api.proto: {e}"));
}
