//! The gRPC surface: generated protobuf types, the `Lookalike` service over
//! the engine, and the mapping of engine errors to statuses. Nothing here
//! decides anything about images; it converts and delegates.

pub mod auth;
pub mod service;
pub mod status;

/// Generated from `proto/lookalike/v1/lookalike.proto`.
pub mod proto {
    tonic::include_proto!("lookalike.v1");

    /// Serialized descriptors, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("lookalike_descriptor");
}
