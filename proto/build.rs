//! Generates the Rust SDK from `palisade/v1/*.proto` with protox (no system protoc).

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &[
    "palisade/v1/policy.proto",
    "palisade/v1/event.proto",
    "palisade/v1/flow.proto",
    "palisade/v1/capture.proto",
    "palisade/v1/agent.proto",
    "palisade/v1/node.proto",
    "palisade/v1/bundle.proto",
    "palisade/v1/token.proto",
    "palisade/v1/explain.proto",
    "palisade/v1/rollout.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // The descriptor set feeds gRPC reflection on the server.
    fs::write(out.join("palisade_descriptor.bin"), fds.encode_to_vec())?;
    // Services (clients and servers) only with the `grpc` feature: the messages alone link no
    // tonic.
    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        // BTreeMap keeps map encoding deterministic, so policy digests are stable.
        .btree_map(".")
        // A bundle's content is shared by every push of it (reference-counted, not copied).
        .bytes(".palisade.v1.Bundle.content")
        // Parts are slices of that shared content.
        .bytes(".palisade.v1.BundlePart.content")
        .compile_fds(fds)?;
    Ok(())
}
