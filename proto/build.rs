//! Generates the Rust code of the protocol buffers with a vendored `protoc`, so that
//! building needs no protobuf compiler on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = ["proto/tidemark/v1/tidemark.proto", "proto/tidemark/internal/v1/worker.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .file_descriptor_set_path(out.join("tidemark_descriptor.bin"))
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
