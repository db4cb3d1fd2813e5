//! Claimed jobs on their way to the caller they were claimed for.
//!
//! A claim is made for a caller who may leave before it is answered: its call
//! cancelled (a worker shutting down while its claim is parked) or past its
//! deadline while the claim statement ran, or while the submission that took
//! its parked claim (see [`crate::handoff`]) committed. Its jobs would then sit
//! leased to nobody until the lease expired, and the claim would count as one
//! of their attempts. A [`Delivery`] carries claimed jobs to their caller; if it
//! is dropped before the caller takes them ([`Delivery::take`]), wherever that
//! happens (an answer channel whose receiver is gone, a handler future dropped
//! with the answer in it), it gives them back to the queue at once
//! ([`crate::storage::Storage::give_back`]).
//!
//! What it cannot cover: an answer lost after the handler returned it (the
//! connection dropped while the response was on its way). Those jobs wait for
//! their lease to expire, as in any queue that leases.

use std::fmt;
use std::sync::Arc;

use crate::job::{ClaimedJob, LeaseRef};
use crate::storage::Storage;

/// What to do with the leases of jobs whose caller was never answered; cheap to
/// clone.
#[derive(Clone)]
pub struct GiveBack(Arc<dyn Fn(Vec<LeaseRef>) + Send + Sync>);

impl fmt::Debug for GiveBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GiveBack")
    }
}

impl GiveBack {
    /// Gives the leases to `give_back`.
    pub fn new(give_back: impl Fn(Vec<LeaseRef>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(give_back))
    }

    /// Gives the jobs back to `storage`'s queue, on a task of their own (a drop
    /// cannot wait). Outside a runtime (it is shutting down) they are left to
    /// lease expiry.
    pub fn to(storage: Storage) -> Self {
        Self::new(move |leases| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::warn!(
                    jobs = leases.len(),
                    "claimed jobs left to lease expiry: no runtime to give them back"
                );
                return;
            };
            let storage = storage.clone();
            runtime.spawn(async move {
                match storage.give_back(&leases).await {
                    Ok(given) => tracing::info!(
                        claimed = leases.len(),
                        given_back = given,
                        "jobs claimed for a caller that left given back to the queue"
                    ),
                    Err(error) => tracing::warn!(
                        %error,
                        jobs = leases.len(),
                        "jobs claimed for a caller that left could not be given back; their leases will expire"
                    ),
                }
            });
        })
    }
}

/// Claimed jobs not yet taken by their caller. Dropped untaken, it gives them
/// back.
#[derive(Debug)]
pub struct Delivery {
    jobs: Vec<ClaimedJob>,
    give_back: Option<GiveBack>,
}

impl Delivery {
    /// `jobs`, given back by `give_back` unless taken.
    pub fn new(jobs: Vec<ClaimedJob>, give_back: &GiveBack) -> Self {
        let give_back = (!jobs.is_empty()).then(|| give_back.clone());
        Self { jobs, give_back }
    }

    /// No jobs.
    pub fn empty() -> Self {
        Self {
            jobs: Vec::new(),
            give_back: None,
        }
    }

    /// Whether there are no jobs.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The jobs, now the caller's: call it only where nothing can stop them
    /// reaching the caller but a lost connection.
    pub fn take(mut self) -> Vec<ClaimedJob> {
        self.give_back = None;
        std::mem::take(&mut self.jobs)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(give_back) = self.give_back.take() {
            (give_back.0)(self.jobs.iter().map(ClaimedJob::lease).collect());
        }
    }
}

/// A claimed job for unit tests.
#[cfg(test)]
pub(crate) fn example_claim() -> ClaimedJob {
    use crate::job::{Job, JobId, LeaseId};
    let now = chrono::Utc::now();
    ClaimedJob {
        job: Job {
            id: JobId::generate(),
            user_id: None,
            image_url: "https://example.com/menu.jpg".into(),
            image_sha256: None,
            status: "processing".into(),
            schema_version: "stage1".into(),
            prompt_version: "v1.0".into(),
            result: None,
            error_message: None,
            processing_time: None,
            retry_count: 0,
            retry_of_job_id: None,
            attempt: 1,
            token_usage: None,
            confidence: None,
            uncertain_items: None,
            superfluous_text: None,
            created_at: now,
            updated_at: now,
            started_at: Some(now),
            completed_at: None,
            version: 1,
            cancel_requested: false,
        },
        lease_id: LeaseId(uuid::Uuid::new_v4()),
        lease_expires_at: now,
    }
}

/// A give-back for unit tests, and the leases it was given.
#[cfg(test)]
pub(crate) fn recorder() -> (GiveBack, Arc<std::sync::Mutex<Vec<LeaseRef>>>) {
    let given = Arc::new(std::sync::Mutex::new(Vec::new()));
    let give_back = GiveBack::new({
        let given = given.clone();
        move |leases| given.lock().unwrap().extend(leases)
    });
    (give_back, given)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn jobs_dropped_untaken_are_given_back_and_taken_ones_are_not() {
        let (give_back, given) = recorder();
        let jobs = vec![example_claim(), example_claim()];
        let leases: Vec<LeaseRef> = jobs.iter().map(ClaimedJob::lease).collect();
        drop(Delivery::new(jobs, &give_back));
        assert_eq!(*given.lock().unwrap(), leases);

        given.lock().unwrap().clear();
        let taken = Delivery::new(vec![example_claim()], &give_back).take();
        assert_eq!(taken.len(), 1);
        drop(Delivery::new(Vec::new(), &give_back));
        drop(Delivery::empty());
        assert!(given.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_answer_whose_receiver_is_gone_is_given_back() {
        let (give_back, given) = recorder();
        let (answer, receiver) = tokio::sync::oneshot::channel();
        drop(receiver);
        let claimed = example_claim();
        let _ = answer.send(Delivery::new(vec![claimed.clone()], &give_back));
        assert_eq!(given.lock().unwrap().len(), 1);
        assert_eq!(given.lock().unwrap()[0].job_id, claimed.job.id);

        // Unread in a channel whose receiver then goes: given back too.
        let (answer, receiver) = tokio::sync::oneshot::channel();
        let _ = answer.send(Delivery::new(vec![example_claim()], &give_back));
        drop(receiver);
        assert_eq!(given.lock().unwrap().len(), 2);
    }
}
