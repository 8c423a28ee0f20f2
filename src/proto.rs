//! Code generated from `proto/translation/v1` by `build.rs`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("translation.v1");

/// The encoded file descriptor set that server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/translation_descriptor.bin"));
