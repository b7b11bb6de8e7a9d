//! Generates the Rust types for `proto/quiver/v1/quiver.proto` with prost.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate so that building Quiver needs nothing
//! beyond cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/quiver/v1/quiver.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.compile_protos(&["proto/quiver/v1/quiver.proto"], &["proto"])?;
    Ok(())
}
