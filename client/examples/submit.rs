//! Submits a menu photo and waits for its extraction.
//!
//! ```sh
//! cargo run -p jobq-client --example submit -- path/to/menu.jpg
//! ```
//!
//! The photo is named by a `file://` URL, so a worker on the same machine (the
//! `worker` example) can read it.

mod common;

use std::time::Duration;

use jobq_client::{JobStatus, SubmitJob, WaitOptions, sha256_hex};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: submit PHOTO (a menu photo to extract)")?;
    let path = std::fs::canonicalize(&path).map_err(|e| format!("{path}: {e}"))?;
    let photo = std::fs::read(&path)?;
    let user = common::user();
    let client = common::client().await?;

    let request = SubmitJob::new(
        user,
        format!("file://{}", path.display()),
        sha256_hex(&photo),
    );
    let submitted = client.submit_job(request).await?;
    let job = submitted.job;
    println!(
        "submitted job {} for user {user} ({})",
        job.id,
        if submitted.deduplicated {
            "an identical job already existed"
        } else {
            "new"
        }
    );

    let options =
        WaitOptions::new(Duration::from_secs(60)).on_update(|job| println!("  {:?}", job.status));
    let done = client.wait_for_job(user, job.id, options).await?;
    match done.status {
        JobStatus::Completed => {
            let result = done.result.unwrap_or_default();
            println!("result: {}", serde_json::to_string_pretty(&result)?);
            Ok(())
        }
        status => Err(format!(
            "job {} ended {:?}: {}",
            done.id,
            status,
            done.error_message.unwrap_or_default()
        )
        .into()),
    }
}
