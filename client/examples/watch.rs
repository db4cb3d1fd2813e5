//! Follows the demo user's jobs as they change, until Ctrl-C.
//!
//! ```sh
//! cargo run -p jobq-client --example watch
//! ```

mod common;

use futures_util::StreamExt;
use jobq_client::WatchJobs;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let user = common::user();
    let client = common::client().await?;
    println!("watching the jobs of user {user}");
    let mut events = std::pin::pin!(client.watch_jobs(WatchJobs::user(user)));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => {
                    let event = event?;
                    println!("{:?} {} {:?}", event.kind, event.job.id, event.job.status);
                }
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
