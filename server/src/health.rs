//! `grpc.health.v1`: SERVING only while the database answers.

use std::time::Duration;

use jobq_proto::pb::{admin_service_server, job_queue_service_server, worker_service_server};
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::storage::Storage;

/// The names health reports on: the whole server (`""`) and each jobq service.
pub const SERVICE_NAMES: [&str; 4] = [
    "",
    job_queue_service_server::SERVICE_NAME,
    worker_service_server::SERVICE_NAME,
    admin_service_server::SERVICE_NAME,
];

/// Sets every name in [`SERVICE_NAMES`] to `status`.
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// Pings the database every `interval` and reports SERVING while it answers and
/// the change feed is listening (`listening`), NOT_SERVING otherwise, until
/// `shutdown` turns true; then reports NOT_SERVING for good.
pub async fn probe(
    storage: Storage,
    reporter: HealthReporter,
    interval: Duration,
    mut listening: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    // A ping that takes longer than this counts as a failure.
    let deadline = interval.max(Duration::from_secs(1));
    let mut serving = None;
    loop {
        let answer = tokio::time::timeout(deadline, storage.ping()).await;
        let feed_up = *listening.borrow_and_update();
        let ok = matches!(answer, Ok(Ok(()))) && feed_up;
        if serving != Some(ok) {
            match &answer {
                Ok(Ok(())) if !feed_up => {
                    tracing::warn!("change feed is not listening: not serving")
                }
                Ok(Ok(())) => {
                    tracing::info!("database answers and the change feed listens: serving")
                }
                Ok(Err(error)) => tracing::warn!(%error, "database does not answer: not serving"),
                Err(_) => tracing::warn!(
                    timeout_ms = deadline.as_millis(),
                    "database ping timed out: not serving"
                ),
            }
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_all(&reporter, status).await;
            serving = Some(ok);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = listening.changed() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    set_all(&reporter, ServingStatus::NotServing).await;
}
