//! The change feed: one `LISTEN menu_extraction_jobs` connection per server
//! process, fanned out in memory.
//!
//! Today it wakes parked `ClaimJobs` callers: every notification that mentions a
//! queued job (a new job, or one returned to the queue by lease expiry) bumps a
//! counter that parked callers watch. Notifications are lossy while the listener
//! reconnects, so every (re)connection bumps the counter too: a woken caller looks
//! at the table, which is the source of truth, never at the notification.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

/// The channel the job table's triggers notify.
pub const CHANNEL: &str = "menu_extraction_jobs";

/// In-memory fan-out of the job table's notifications.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    queued: watch::Sender<u64>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeFeed {
    /// A feed nobody has fed yet.
    pub fn new() -> Self {
        Self {
            queued: watch::Sender::new(0),
        }
    }

    /// A receiver that sees every later sign that queued work may exist. Take it
    /// *before* looking at the table, so that work queued in between is not missed.
    pub fn queued_work(&self) -> watch::Receiver<u64> {
        let mut receiver = self.queued.subscribe();
        receiver.mark_unchanged();
        receiver
    }

    /// Signals that queued work may exist.
    pub fn wake_claimers(&self) {
        self.queued.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Handles one notification payload (see the migrations for its shape).
    fn on_notification(&self, payload: &str) {
        let mentions_queued = serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .and_then(|value| {
                let jobs = value.get("jobs")?.as_array()?.clone();
                Some(
                    jobs.iter()
                        .any(|job| job.get(2).and_then(|s| s.as_str()) == Some("queued")),
                )
            })
            // A payload jobq cannot read may still mean work: look.
            .unwrap_or(true);
        if mentions_queued {
            self.wake_claimers();
        }
    }
}

/// Listens on [`CHANNEL`] until `stop` turns true, reconnecting with backoff.
pub async fn listen(database_url: String, feed: ChangeFeed, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = async {
            let mut listener = PgListener::connect(&database_url).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            result = connected => result,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, retry_ms = backoff.as_millis(), "change feed cannot listen");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tracing::info!(channel = CHANNEL, "change feed listening");
        backoff = Duration::from_millis(100);
        // Whatever was notified before this connection listened was missed.
        feed.wake_claimers();
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => feed.on_notification(notification.payload()),
                    Ok(None) => {
                        // The connection was lost; the next try_recv reconnects.
                        // Notifications sent meanwhile are gone: look at the table.
                        tracing::warn!("change feed lost its connection; reconnecting");
                        feed.wake_claimers();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "change feed failed; reconnecting");
                        break;
                    }
                },
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_queued_jobs_wake_claimers() {
        let feed = ChangeFeed::new();
        let mut seen = feed.queued_work();
        feed.on_notification(r#"{"op":"UPDATE","jobs":[["a","u","completed",3]]}"#);
        assert!(!seen.has_changed().unwrap());
        feed.on_notification(
            r#"{"op":"INSERT","jobs":[["a","u","processing",4],["b","u","queued",5]]}"#,
        );
        assert!(seen.has_changed().unwrap());
        seen.mark_unchanged();
        feed.on_notification("not json");
        assert!(
            seen.has_changed().unwrap(),
            "an unreadable payload makes claimers look"
        );
    }
}
