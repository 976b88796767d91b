//! The `lb.v1` API: generated protobuf/tonic code (re-exported as [`pb`]) and
//! the validated domain model every component works with ([`model`]).
//!
//! Wire types are only ever turned into domain types through the `TryFrom`
//! conversions in [`convert`], which is where every input rule lives.

mod generated {
    #![allow(clippy::all, unreachable_pub, rust_2018_idioms)]
    tonic::include_proto!("lb.v1");
}

/// Generated protobuf messages and gRPC clients/servers of package `lb.v1`.
pub mod pb {
    pub use crate::generated::*;
}

/// Encoded `FileDescriptorSet` of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lb_v1_descriptor.bin"));

pub mod backup;
pub mod client;
pub mod convert;
pub mod json;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod process;

pub use convert::FieldError;
