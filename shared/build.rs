//! Generates the config-distribution gRPC code from `proto/` with a vendored `protoc`, so a
//! build needs no system protobuf compiler.
//!
//! The generated client and server need only tonic's codegen. The client's `connect(url)`
//! constructor needs tonic's network transport, so it is generated only with this crate's
//! `transport` feature; without it `shared` builds no network stack.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = std::env::var_os("CARGO_FEATURE_TRANSPORT").is_some();
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // One shared buffer per snapshot body: every gRPC watcher sends the same `Bytes`.
    config.bytes([".switchboard.config.v1.SnapshotEnvelope.snapshot_json"]);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(transport)
        .compile_with_config(
            config,
            &["proto/switchboard/config/v1/config.proto"],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
