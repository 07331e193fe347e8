//! Compiles `proto/lookalike/v1/lookalike.proto` into Rust with tonic-prost-build,
//! using the protoc binary vendored by `protoc-bin-vendored` so no system protoc
//! is needed, and writes the file descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: set_var is unsound only while another thread reads the
    // environment; this build script has started no thread. prost-build
    // reads PROTOC.
    unsafe { env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("lookalike_descriptor.bin"))
        .compile_protos(&["proto/lookalike/v1/lookalike.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
