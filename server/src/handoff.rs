//! Parked ClaimJobs calls, which a submission may serve in its own transaction.
//!
//! A worker whose claim found nothing parks until work is queued. A submission
//! batch that creates jobs takes parked claims (the longest parked first, at
//! most one per new job), runs their claim in its own transaction after the
//! insert, and answers them once it has committed. The claim is ClaimJobs' own
//! statement (the oldest queued jobs first, `FOR UPDATE SKIP LOCKED`, dealt
//! round the claims in turn), so a job queued earlier is still claimed before
//! the new ones, and every claim taken gets at least one job. The
//! worker's answer then leaves with the submitter's, after one commit instead
//! of the submission's and then the claim's own; the new job is never seen
//! queued, because its first committed state is already processing.
//!
//! Only a batch of a few new jobs hands them on (see [`MOST_JOBS_HANDED`]).
//!
//! A taken claim is promised to its batch: it is answered with its jobs after
//! the commit, or with nothing when the batch rolled back (the claimer then
//! looks again), and its claimer must wait for that answer before it may
//! leave ([`Ticket::leave`]). A claimer that went away all the same (its call
//! cancelled) has its jobs given back (see [`crate::delivery`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, watch};

use crate::delivery::Delivery;
use crate::job::ClaimRequest;

/// The most new jobs a submission batch hands to parked claims. The claim
/// lengthens the batch's transaction, which every submitter in it waits for; a
/// larger batch means submissions are arriving fast, so workers come back for
/// their jobs soon anyway, and claims of their own share the jobs at no cost to
/// the submitters. Measured by issue 8's steady scenario (64 submitters, 8
/// workers; three alternating pairs): handing on every batch's jobs took it from
/// 2,413-2,827 to 1,993-2,544 jobs/s (submit-to-completion p50 21-26 ms to
/// 16-21), while batches of one or a few, as when submissions come one at a
/// time, are where a parked worker's pickup is decided.
pub const MOST_JOBS_HANDED: usize = 8;

/// The parked claims of one server process; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handoff {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    parked: Mutex<Parked>,
    /// How many claims are parked, for whoever needs to know when one is.
    count: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct Parked {
    next_id: u64,
    claims: VecDeque<ParkedClaim>,
}

#[derive(Debug)]
struct ParkedClaim {
    id: u64,
    request: ClaimRequest,
    answer: oneshot::Sender<Delivery>,
}

impl Default for Handoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Handoff {
    /// No claim parked.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                parked: Mutex::new(Parked::default()),
                count: watch::Sender::new(0),
            }),
        }
    }

    /// Parks `request` until a submission takes it or its ticket leaves.
    pub fn park(&self, request: ClaimRequest) -> Ticket {
        let (answer, handed) = oneshot::channel();
        let mut parked = self.lock();
        let id = parked.next_id;
        parked.next_id += 1;
        parked.claims.push_back(ParkedClaim {
            id,
            request,
            answer,
        });
        self.counted(&parked);
        Ticket {
            id,
            handed,
            handoff: self.clone(),
        }
    }

    /// Takes the longest-parked claims, at most `jobs` (one per new job, so
    /// that the claim, which deals jobs round its callers in turn, gives each
    /// at least one). Taking every parked claim the jobs can reach, rather than
    /// only as many as their `max_jobs` need, leaves none parked to be woken by
    /// the same jobs and look for nothing. Takes none when the batch created
    /// more than [`MOST_JOBS_HANDED`].
    pub fn take(&self, jobs: usize) -> Taken {
        let mut taken = Vec::new();
        if jobs > MOST_JOBS_HANDED {
            return Taken { claims: taken };
        }
        let mut parked = self.lock();
        while taken.len() < jobs {
            let Some(claim) = parked.claims.pop_front() else {
                break;
            };
            // Its caller is gone (a ticket being dropped); nobody to answer.
            if claim.answer.is_closed() {
                continue;
            }
            taken.push(claim);
        }
        self.counted(&parked);
        Taken { claims: taken }
    }

    /// How many claims are parked, as it changes.
    pub fn parked(&self) -> watch::Receiver<usize> {
        self.inner.count.subscribe()
    }

    /// Takes the claim `id` back if it is still parked; whether it was.
    fn withdraw(&self, id: u64) -> bool {
        let mut parked = self.lock();
        let Some(at) = parked.claims.iter().position(|claim| claim.id == id) else {
            return false;
        };
        parked.claims.remove(at);
        self.counted(&parked);
        true
    }

    fn counted(&self, parked: &Parked) {
        self.inner.count.send_replace(parked.claims.len());
    }

    fn lock(&self) -> MutexGuard<'_, Parked> {
        // The lock guards a queue that every step leaves whole, so a panic
        // elsewhere while it was held cannot have left it half-changed.
        self.inner
            .parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A parked claim, held by its caller.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    handed: oneshot::Receiver<Delivery>,
    handoff: Handoff,
}

impl Ticket {
    /// Resolves once a submission that took this claim has answered it: with
    /// the jobs claimed, or `None` when its transaction did not commit.
    /// Cancel-safe.
    pub async fn handed(&mut self) -> Option<Delivery> {
        (&mut self.handed).await.ok()
    }

    /// Stops waiting: `None` if no submission had taken the claim, otherwise
    /// (the claim is promised) what that submission answers.
    pub async fn leave(mut self) -> Option<Delivery> {
        if self.handoff.withdraw(self.id) {
            return None;
        }
        self.handed().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A caller gone while parked (its call was cancelled) leaves the queue.
        // A claim already taken is still made, and its jobs, answered to
        // nobody, are given back (see crate::delivery).
        self.handoff.withdraw(self.id);
    }
}

/// Claims a submission batch took; dropping them unanswered tells each
/// claimer to look again.
#[derive(Debug, Default)]
pub struct Taken {
    claims: Vec<ParkedClaim>,
}

impl Taken {
    /// Whether no claim was taken.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// The claims' requests, in the order [`Taken::answer`] expects answers.
    pub fn requests(&self) -> Vec<ClaimRequest> {
        self.claims
            .iter()
            .map(|claim| claim.request.clone())
            .collect()
    }

    /// Answers each claim with its jobs, in the order of [`Taken::requests`].
    pub fn answer(self, claimed: impl IntoIterator<Item = Delivery>) {
        for (claim, jobs) in self.claims.into_iter().zip(claimed) {
            // A claimer gone meanwhile: the delivery, dropped, gives its jobs
            // back.
            let _ = claim.answer.send(jobs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn request(worker: &str, max_jobs: u32) -> ClaimRequest {
        ClaimRequest {
            worker_id: worker.into(),
            max_jobs,
            lease: Duration::from_secs(60),
            wait: Duration::from_secs(10),
        }
    }

    fn workers(taken: &Taken) -> Vec<String> {
        taken.requests().into_iter().map(|r| r.worker_id).collect()
    }

    #[test]
    fn a_batch_takes_the_longest_parked_claims_one_per_new_job_at_most() {
        let handoff = Handoff::new();
        let _a = handoff.park(request("a", 2));
        let _b = handoff.park(request("b", 1));
        let _c = handoff.park(request("c", 5));
        let _d = handoff.park(request("d", 5));
        assert_eq!(*handoff.parked().borrow(), 4);
        // Two jobs: one each for the two longest parked.
        assert_eq!(workers(&handoff.take(2)), ["a", "b"]);
        assert_eq!(*handoff.parked().borrow(), 2);
        assert!(handoff.take(0).is_empty());
        // More jobs than a batch hands on: none taken.
        assert!(handoff.take(MOST_JOBS_HANDED + 1).is_empty());
        assert_eq!(*handoff.parked().borrow(), 2);
        // Eight jobs: every claim still parked, to share them.
        assert_eq!(workers(&handoff.take(MOST_JOBS_HANDED)), ["c", "d"]);
        assert!(handoff.take(1).is_empty());
        assert_eq!(*handoff.parked().borrow(), 0);
    }

    #[test]
    fn a_dropped_ticket_leaves_the_queue() {
        let handoff = Handoff::new();
        let gone = handoff.park(request("gone", 1));
        let _kept = handoff.park(request("kept", 1));
        drop(gone);
        assert_eq!(*handoff.parked().borrow(), 1);
        assert_eq!(workers(&handoff.take(1)), ["kept"]);
    }

    #[tokio::test]
    async fn leaving_an_untaken_claim_answers_nothing_and_a_taken_one_waits_for_its_batch() {
        let handoff = Handoff::new();
        let untaken = handoff.park(request("untaken", 1));
        assert!(untaken.leave().await.is_none());
        assert_eq!(*handoff.parked().borrow(), 0);

        let taken = handoff.park(request("taken", 1));
        let batch = handoff.take(1);
        let leaving = taken.leave();
        tokio::pin!(leaving);
        assert!(
            futures_util::poll!(&mut leaving).is_pending(),
            "a promised claim waits for its batch"
        );
        batch.answer([Delivery::empty()]);
        assert!(leaving.await.is_some_and(|jobs| jobs.is_empty()));

        // A claimer gone after its claim was taken: its jobs are given back.
        let (give_back, given) = crate::delivery::recorder();
        let gone = handoff.park(request("gone", 1));
        let batch = handoff.take(1);
        drop(gone);
        let claimed = crate::delivery::example_claim();
        batch.answer([Delivery::new(vec![claimed.clone()], &give_back)]);
        assert_eq!(
            given
                .lock()
                .unwrap()
                .iter()
                .map(|lease| lease.job_id)
                .collect::<Vec<_>>(),
            [claimed.job.id]
        );

        // A batch that did not commit answers nothing: the claimer looks again.
        let mut rolled_back = handoff.park(request("rolled back", 1));
        drop(handoff.take(1));
        assert!(rolled_back.handed().await.is_none());
    }
}
