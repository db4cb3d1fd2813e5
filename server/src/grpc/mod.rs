//! One module per gRPC service. Handlers are thin: convert (validating), call
//! storage, convert back; errors become `Status` through [`crate::error`].

pub mod admin;
pub mod jobs;
pub mod worker;

use tonic::Status;

/// The answer of an RPC that a later release builds: UNIMPLEMENTED, saying so.
fn not_built_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is part of the jobq.v1 schema but this server does not implement it yet"
    ))
}
