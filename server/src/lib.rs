//! jobq's server: a gRPC service that queues, runs and reports vision-LLM extraction
//! jobs over Postgres.
//!
//! The layers, outermost first:
//! - [`grpc`]: one module per gRPC service; handlers validate, convert, call
//!   [`storage`] and convert back. They never touch SQL.
//! - [`convert`]: proto messages to domain values (every string parsed once, with a
//!   `BadRequest` violation per bad field) and domain values back to proto.
//! - [`storage`]: every SQL statement, the embedded migrations and database creation.
//! - [`error`]: the domain error and its one mapping to `tonic::Status`.
//!
//! [`App`] wires them together; `main.rs` only parses the command line.

pub mod auth;
pub mod config;
pub mod convert;
pub mod delivery;
pub mod error;
pub mod group_commit;
pub mod grpc;
pub mod handoff;
pub mod health;
pub mod job;
pub mod page_token;
pub mod plans;
pub mod protocol;
pub mod quota;
pub mod reaper;
pub mod resume;
pub mod storage;
pub mod telemetry;
pub mod watch;

mod app;

pub use app::App;
pub use config::Config;
