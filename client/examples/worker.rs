//! A worker: claims jobs and runs them, 4 at a time, until Ctrl-C.
//!
//! ```sh
//! cargo run -p jobq-client --example worker
//! ```
//!
//! Its `extract` stands in for the vision model: it reads the photo (from a
//! `file://` URL), checks it against the submitted SHA-256, and reports what it
//! found. Put the model call where it says.

mod common;

use std::time::Duration;

use jobq_client::{Completion, JobContext, Worker, sha256_hex};
use serde_json::json;

async fn extract(job: JobContext) -> Result<Completion, String> {
    let url = job.job.image_url.clone();
    let path = url
        .strip_prefix("file://")
        .ok_or_else(|| format!("this example reads only file:// photos, not {url}"))?
        .to_owned();
    let photo = tokio::task::spawn_blocking(move || std::fs::read(&path))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read {url}: {e}"))?;
    if sha256_hex(&photo) != job.job.image_sha256 {
        return Err(format!(
            "{url} changed since it was submitted (SHA-256 differs)"
        ));
    }
    if job.is_cancelled() {
        return Err("cancelled by its owner".to_owned());
    }
    // The model call goes here: send `photo`, parse the menu it returns.
    let format = match photo.as_slice() {
        [0xFF, 0xD8, 0xFF, ..] => "jpeg",
        [0x89, b'P', b'N', b'G', ..] => "png",
        _ => "unknown",
    };
    let mut result = serde_json::Map::new();
    result.insert(
        "photo".into(),
        json!({ "bytes": photo.len(), "format": format }),
    );
    Ok(Completion::new(result))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = common::client().await?;
    println!("worker started; Ctrl-C to stop");
    let report = Worker::builder(client.worker())
        .worker_id("example-worker")
        .concurrency(4)
        .lease(Duration::from_secs(30))
        .run(extract, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!("{report:?}");
    Ok(())
}
