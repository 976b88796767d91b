//! Compiles `lb/v1/*.proto` with protox (pure Rust, so no system `protoc` is
//! needed on a fresh machine) and writes the encoded descriptor set that the
//! controller serves over gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "lb/v1/model.proto",
    "lb/v1/service_admin.proto",
    "lb/v1/cluster_admin.proto",
    "lb/v1/raft.proto",
    "lb/v1/agents.proto",
    "lb/v1/enrollment.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("lb_v1_descriptor.bin"), fds.encode_to_vec())?;

    // Well-known types (Duration) map to prost-types, so only lb.v1 is generated.
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
