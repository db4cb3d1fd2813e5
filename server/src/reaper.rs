//! Lease expiry: a background task that ends expired leases (see
//! [`crate::storage::Storage::expire_leases`]). Every server process runs one; the
//! statement is safe to run concurrently.

use std::time::Duration;

use tokio::sync::watch;

use crate::storage::Storage;

/// Expires leases every `interval` until `stop` turns true. Jobs it returns to the
/// queue are notified by the table's trigger, which wakes parked claimers.
pub async fn run(
    storage: Storage,
    interval: Duration,
    max_attempts: i32,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        loop {
            match storage.expire_leases(max_attempts).await {
                Ok(expired) if expired.requeued + expired.failed + expired.cancelled > 0 => {
                    tracing::info!(
                        requeued = expired.requeued,
                        failed = expired.failed,
                        cancelled = expired.cancelled,
                        "expired leases ended"
                    );
                    // A full batch may mean more are waiting: go again at once.
                    if expired.requeued + expired.failed + expired.cancelled < 1000 {
                        break;
                    }
                }
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "lease expiry failed; trying again later");
                    break;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}
