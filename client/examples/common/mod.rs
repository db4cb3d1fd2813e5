//! What the examples share: where the server is, the key, and the demo user.
#![allow(dead_code)] // the worker needs no user

use jobq_client::{Error, JobQueueClient};
use uuid::Uuid;

/// The user the examples act for unless `JOBQ_USER` names another.
const DEMO_USER: &str = "11111111-2222-4333-8444-555555555555";

/// `JOBQ_USER`, or the demo user.
pub fn user() -> Uuid {
    let user = std::env::var("JOBQ_USER").unwrap_or_else(|_| DEMO_USER.to_owned());
    Uuid::parse_str(&user).unwrap_or_else(|_| panic!("JOBQ_USER `{user}` is not a UUID"))
}

/// A client of the server at `JOBQ_URL` (default `http://127.0.0.1:50051`), with
/// the key in `JOBQ_API_KEY` if there is one.
pub async fn client() -> Result<JobQueueClient, Error> {
    let url = std::env::var("JOBQ_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".to_owned());
    JobQueueClient::builder(url)
        .api_key(std::env::var("JOBQ_API_KEY").unwrap_or_default())
        .build()
        .await
}
