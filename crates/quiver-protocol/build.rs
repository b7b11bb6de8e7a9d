//! Generates the Rust types for the top-level `proto/quiver/v1/quiver.proto` with prost, and one encoded
//! `FileDescriptorSet` of that file and `proto/arrow/flight/protocol/flight.proto` for gRPC
//! server reflection.
//!
//! `protoc` and the well-known types come from the `protoc-bin-vendored` crate so that
//! building Quiver needs nothing beyond cargo.

use std::path::PathBuf;

/// The files, under the repository's top-level `proto/`.
const PROTOS: [&str; 2] = [
    "quiver/v1/quiver.proto",
    "arrow/flight/protocol/flight.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Only quiver.v1's Rust types are used (arrow-flight has its own); Flight's are generated
    // as a by-product and never included.
    config.file_descriptor_set_path(out.join("descriptors.bin"));
    config.compile_protos(&protos, &[root, protoc_bin_vendored::include_path()?])?;
    Ok(())
}
