//! Protocol types for jobq, the vision-LLM extraction job queue.
//!
//! [`pb`] holds the generated messages, clients and servers of the `jobq.v1`
//! package and its encoded descriptor set (for server reflection). [`json`]
//! converts between `google.protobuf.Struct`-family values and `serde_json`, which
//! the server (JSONB columns) and the client (typed results) both need.
#![warn(missing_docs)]

mod generated {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    #[rustfmt::skip]
    pub mod jobq_v1 {
        tonic::include_proto!("jobq.v1");
    }
}

/// The generated `jobq.v1` types, clients and servers.
pub mod pb {
    pub use crate::generated::jobq_v1::*;

    /// The encoded `FileDescriptorSet` of every `jobq.v1` file, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("jobq_descriptor");
}

pub mod json;
