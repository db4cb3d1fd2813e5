//! One module per gRPC service. Handlers are thin: convert (validating), call
//! storage, convert back; errors become `Status` through [`crate::error`].

pub mod admin;
pub mod jobs;
pub mod worker;
