//! Compiles `proto/` with tonic's prost code generator and writes the file
//! descriptor set that server reflection serves.

use std::{env, error::Error, path::PathBuf};

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &["proto/translation/v1/translation_jobs.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // protoc ships inside a crate, so no system package is needed.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    tonic_prost_build::configure()
        // Prost's codec with smaller per-call buffers (see src/codec.rs).
        .codec_path("crate::codec::SmallBufferCodec")
        .file_descriptor_set_path(out_dir.join("translation_descriptor.bin"))
        .compile_with_config(
            config,
            &PROTOS.iter().map(PathBuf::from).collect::<Vec<_>>(),
            &[PathBuf::from(PROTO_ROOT), well_known],
        )?;

    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    // `sqlx::migrate!` embeds the migrations when the crate compiles: a new
    // file must make it compile again.
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
