//! Compiles the `.proto` files with `protox` (pure Rust, no system `protoc`)
//! and generates the prost types that `src/pb.rs` includes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["pubsub/v1/protocol.proto", "pubsub/v1/broker.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
