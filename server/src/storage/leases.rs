//! The worker protocol's statements: claim, heartbeat, complete, fail, and lease
//! expiry. Every write is one conditional statement that names the lease it
//! applies under, so a worker whose lease was lost can never overwrite a newer
//! outcome.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgExecutor;

use super::{Storage, StorageError};
use crate::delivery::{Delivery, GiveBack};
use crate::job::{
    ClaimRequest, ClaimedJob, Completion, Failure, Job, JobId, JobStatus, LeaseId, LeaseRef,
};

/// Why a write under a lease did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseRefusal {
    /// No such job.
    NotFound,
    /// The job is finished; its stored status.
    Finished(String),
    /// The lease is not the job's current one (expired and requeued or
    /// reclaimed, or never issued).
    LeaseLost,
}

/// A renewed lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// When it now runs out.
    pub lease_expires_at: DateTime<Utc>,
    /// Whether the job's owner asked to cancel it.
    pub cancel_requested: bool,
}

/// What one pass of lease expiry did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Jobs returned to the queue.
    pub requeued: u64,
    /// Jobs failed for running out of attempts.
    pub failed: u64,
    /// Jobs whose owner had asked to cancel them, now cancelled.
    pub cancelled: u64,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A job claimed by a batch, and the index of the caller it was dealt to.
#[derive(sqlx::FromRow)]
struct Dealt {
    caller: i32,
    #[sqlx(flatten)]
    job: ClaimedJob,
}

/// The columns of [`ClaimedJob`]: the job's and its lease.
macro_rules! claimed_columns {
    () => {
        concat!(job_columns!(), ", lease_id, lease_expires_at")
    };
}

/// The claim statement of [`Storage::claim_batch`]: `$1` the caller of each
/// slot, in the order slots are filled; `$2` and `$3` each caller's worker id
/// and lease length in milliseconds; `$4` the instant the jobs are claimed at
/// (NULL: the transaction's start, `now()`).
///
/// The claim itself is the function `jobq_claim` (migrations 0010 and 0013), whose plan
/// is made once per connection and is the same whatever the statistics say:
/// the queue index walked in order and stopped after the slots (a bitmap scan
/// would read every queued job and sort them all to take the oldest few, 39 ms
/// to claim 100 of 20,000 against 1.5), and each locked job updated where it
/// lies (a TID scan). Planning it at every execution was a third of a one-job
/// claim, which is most of a parked worker's pickup; the migration says why no
/// other plan can be chosen.
#[doc(hidden)]
pub const CLAIM: &str = concat!(
    "SELECT caller, ",
    claimed_columns!(),
    " FROM jobq_claim($1, $2, $3, $4)"
);

/// The completion statement of [`Storage::complete_jobs`]: completes each job
/// named in `$1` (no id twice) whose lease is the one at the same position in
/// `$2`, with the result columns at that position in `$3` to `$7`, and
/// returns the jobs it completed. It runs on the connections that plan once
/// (see [`super::PLANNED_ONCE_SETTINGS`]): found by primary key, the only index
/// that holds a job's id (migration 0014).
///
/// No join: each row finds its completion by its position in the arrays.
/// Joined to the arrays, the statement's plan hung on an estimate of how
/// many jobs are processing, read from statistics taken whenever the
/// table was last analyzed. Estimated at one (taken while nothing was
/// processing), the planner rescanned the arrays once per row: 256
/// completions took 25 ms instead of 6. Found by primary key alone, a
/// batch costs the same whatever the statistics say.
#[doc(hidden)]
pub const COMPLETE: &str = concat!(
    "UPDATE menu_extraction_jobs AS j
     SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'completed' END,
         (result, token_usage, confidence, uncertain_items, superfluous_text) = (
             SELECT ($3::jsonb[])[n], ($4::jsonb[])[n], ($5::real[])[n],
                    ($6::jsonb[])[n], ($7::jsonb[])[n]
             FROM array_position($1::uuid[], j.id) AS n
         ),
         completed_at = now(),
         processing_time = LEAST(EXTRACT(EPOCH FROM now() - started_at) * 1000, 2147483647)::integer,
         lease_expires_at = NULL,
         ",
    touched!(),
    "
     WHERE id = ANY($1) AND status = 'processing'
       AND lease_id = ($2::uuid[])[array_position($1::uuid[], id)]
     RETURNING ",
    job_columns!()
);

impl Storage {
    /// Claims for one or more callers in one statement, each up to its
    /// `max_jobs` of the oldest queued jobs: a CTE locks them with `FOR UPDATE
    /// SKIP LOCKED` (so concurrent claimers, in any process, never take the
    /// same job), deals them in turn (the oldest to the first caller, the next
    /// to the second, and so on round the callers until each has its
    /// `max_jobs` or none is left), so that callers woken together by the same
    /// jobs share them instead of one taking all and the rest finding nothing,
    /// and the UPDATE makes each one PROCESSING under a fresh lease, with its
    /// caller's worker id and lease length. Returns each caller's jobs, oldest
    /// first, as a [`Delivery`] that gives them back unless the caller takes
    /// them.
    pub async fn claim_batch(
        &self,
        requests: &[ClaimRequest],
    ) -> Result<Vec<Delivery>, StorageError> {
        let claimed = claim(&self.planned_once, requests, None).await?;
        Ok(self.deliveries(claimed))
    }

    /// Each caller's claimed jobs on their way to it: given back to this
    /// storage's queue if dropped before the caller takes them (see
    /// [`crate::delivery`]).
    pub(super) fn deliveries(&self, claimed: Vec<Vec<ClaimedJob>>) -> Vec<Delivery> {
        let give_back = GiveBack::to(self.clone());
        claimed
            .into_iter()
            .map(|jobs| Delivery::new(jobs, &give_back))
            .collect()
    }

    /// Extends a lease to `extend_by` from now (or the length it was claimed with).
    pub async fn heartbeat(
        &self,
        lease: LeaseRef,
        extend_by: Option<Duration>,
    ) -> Result<Result<Renewed, LeaseRefusal>, StorageError> {
        let renewed: Option<(DateTime<Utc>, bool)> = sqlx::query_as(
            "UPDATE menu_extraction_jobs
             SET lease_expires_at = now() + COALESCE($3, lease_duration_ms, 60000) * INTERVAL '1 millisecond'
             WHERE id = $1 AND lease_id = $2 AND status = 'processing'
             RETURNING lease_expires_at, cancel_requested",
        )
        .bind(lease.job_id)
        .bind(lease.lease_id)
        .bind(extend_by.map(millis))
        .fetch_optional(&self.planned_once)
        .await?;
        match renewed {
            Some((lease_expires_at, cancel_requested)) => Ok(Ok(Renewed {
                lease_expires_at,
                cancel_requested,
            })),
            None => Ok(Err(self.why_not(lease).await?)),
        }
    }

    /// Completes the job under `completion.lease`: COMPLETED, or CANCELLED when its
    /// owner asked for that meanwhile (the result is kept either way).
    pub async fn complete_job(
        &self,
        completion: &Completion,
    ) -> Result<Result<Job, LeaseRefusal>, StorageError> {
        let mut jobs = self.complete(&[completion]).await?;
        match jobs.pop() {
            Some(job) => Ok(Ok(job)),
            None => Ok(Err(self.why_not(completion.lease).await?)),
        }
    }

    /// Completes a batch of jobs in one statement, each as
    /// [`Storage::complete_job`] would, and answers each completion in order. A
    /// job named more than once is completed by its first completion in the
    /// batch, and the others are then applied one by one (and refused, as they
    /// would have been after it). When the statement fails for a reason that is
    /// not the database being unavailable, every completion is applied on its
    /// own, so that one's trouble is never another's. `Err` only when the
    /// statement failed and nothing was written (the database is unavailable,
    /// or a batch of one failed).
    pub async fn complete_jobs(
        &self,
        batch: &[Completion],
    ) -> Result<Vec<Result<Result<Job, LeaseRefusal>, StorageError>>, StorageError> {
        // Whether each completion is the first in the batch to name its job.
        let mut named = HashSet::new();
        let first: Vec<bool> = batch
            .iter()
            .map(|completion| named.insert(completion.lease.job_id))
            .collect();
        let firsts: Vec<&Completion> = batch
            .iter()
            .zip(&first)
            .filter_map(|(completion, &first)| first.then_some(completion))
            .collect();
        let mut done: HashMap<JobId, Job> = match self.complete(&firsts).await {
            Ok(jobs) => jobs.into_iter().map(|job| (job.id, job)).collect(),
            Err(error @ StorageError::Unavailable(_)) => return Err(error),
            Err(error) if batch.len() == 1 => return Err(error),
            Err(_) => {
                let mut outcomes = Vec::with_capacity(batch.len());
                for completion in batch {
                    outcomes.push(self.complete_job(completion).await);
                }
                return Ok(outcomes);
            }
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        for (completion, first) in batch.iter().zip(first) {
            let outcome = if first {
                match done.remove(&completion.lease.job_id) {
                    Some(job) => Ok(Ok(job)),
                    None => self.why_not(completion.lease).await.map(Err),
                }
            } else {
                self.complete_job(completion).await
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// One statement completing each job of `batch` (no job named twice) whose
    /// lease is current; returns the jobs it completed.
    async fn complete(&self, batch: &[&Completion]) -> Result<Vec<Job>, StorageError> {
        let mut ids = Vec::with_capacity(batch.len());
        let mut leases = Vec::with_capacity(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        let mut token_usage = Vec::with_capacity(batch.len());
        let mut confidence = Vec::with_capacity(batch.len());
        let mut uncertain_items = Vec::with_capacity(batch.len());
        let mut superfluous_text = Vec::with_capacity(batch.len());
        for completion in batch {
            ids.push(completion.lease.job_id.0);
            leases.push(completion.lease.lease_id.0);
            results.push(completion.result.clone());
            token_usage.push(completion.token_usage.clone());
            confidence.push(completion.confidence);
            uncertain_items.push(completion.uncertain_items.clone());
            superfluous_text.push(completion.superfluous_text.clone());
        }
        let jobs = sqlx::query_as::<_, Job>(COMPLETE)
            .bind(ids)
            .bind(leases)
            .bind(results)
            .bind(token_usage)
            .bind(confidence)
            .bind(uncertain_items)
            .bind(superfluous_text)
            .fetch_all(&self.planned_once)
            .await?;
        Ok(jobs)
    }

    /// Fails the job under `failure.lease`: FAILED, or CANCELLED when its owner
    /// asked for that meanwhile.
    pub async fn fail_job(
        &self,
        failure: &Failure,
    ) -> Result<Result<Job, LeaseRefusal>, StorageError> {
        let job = sqlx::query_as::<_, Job>(concat!(
            "UPDATE menu_extraction_jobs
             SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'failed' END,
                 error_message = $3,
                 completed_at = now(),
                 processing_time = LEAST(EXTRACT(EPOCH FROM now() - started_at) * 1000, 2147483647)::integer,
                 lease_expires_at = NULL,
                 ",
            touched!(),
            "
             WHERE id = $1 AND lease_id = $2 AND status = 'processing'
             RETURNING ",
            job_columns!()
        ))
        .bind(failure.lease.job_id)
        .bind(failure.lease.lease_id)
        .bind(&failure.error_message)
        .fetch_optional(&self.planned_once)
        .await?;
        match job {
            Some(job) => Ok(Ok(job)),
            None => Ok(Err(self.why_not(failure.lease).await?)),
        }
    }

    /// Why a write under `lease` matched nothing. A finished job keeps the id of
    /// the lease it finished under, so the worker that finished it hears
    /// INVALID_STATUS, and every other lease (expired, requeued and reclaimed, or
    /// never issued) hears LEASE_LOST.
    async fn why_not(&self, lease: LeaseRef) -> Result<LeaseRefusal, StorageError> {
        let row: Option<(String, Option<LeaseId>)> =
            sqlx::query_as("SELECT status, lease_id FROM menu_extraction_jobs WHERE id = $1")
                .bind(lease.job_id)
                .fetch_optional(&self.planned_once)
                .await?;
        Ok(match row {
            None => LeaseRefusal::NotFound,
            Some((_, current)) if current != Some(lease.lease_id) => LeaseRefusal::LeaseLost,
            Some((status, _))
                if matches!(
                    JobStatus::parse(&status),
                    Some(JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
                ) =>
            {
                LeaseRefusal::Finished(status)
            }
            Some(_) => LeaseRefusal::LeaseLost,
        })
    }

    /// Gives back jobs claimed for a caller that was never answered (see
    /// [`crate::delivery`]): each job still held under its lease ends that lease
    /// at once, as if it had expired, except that the claim does not count as an
    /// attempt (no worker ever held it). It goes back to QUEUED, or to
    /// CANCELLED when its owner asked for that meanwhile; a job that was never
    /// claimed before is then as it was (no `started_at`, no `worker_id`), one
    /// claimed before keeps those of this claim, as a requeued job keeps its
    /// last claim's. Returns how many jobs it gave back; a lease already ended
    /// some other way is left alone.
    pub async fn give_back(&self, leases: &[LeaseRef]) -> Result<u64, StorageError> {
        let ids: Vec<_> = leases.iter().map(|lease| lease.job_id.0).collect();
        let lease_ids: Vec<_> = leases.iter().map(|lease| lease.lease_id.0).collect();
        let given = sqlx::query(concat!(
            "UPDATE menu_extraction_jobs AS j
             SET status = CASE WHEN j.cancel_requested THEN 'cancelled' ELSE 'queued' END,
                 attempt = j.attempt - 1,
                 started_at = CASE WHEN j.attempt > 1 THEN j.started_at END,
                 worker_id = CASE WHEN j.attempt > 1 THEN j.worker_id END,
                 completed_at = CASE WHEN j.cancel_requested THEN now() END,
                 -- As at expiry: a requeued job has no lease; a finished one
                 -- keeps the id of the lease it ended under (see why_not).
                 lease_id = CASE WHEN j.cancel_requested THEN j.lease_id END,
                 lease_expires_at = NULL,
                 ",
            touched!(),
            "
             WHERE j.id = ANY($1) AND j.status = 'processing'
               AND j.lease_id = ($2::uuid[])[array_position($1::uuid[], j.id)]"
        ))
        .bind(ids)
        .bind(lease_ids)
        .execute(&self.planned_once)
        .await?;
        Ok(given.rows_affected())
    }

    /// Ends up to 1,000 expired leases: each job goes back to QUEUED, or to FAILED
    /// once it has been claimed `max_attempts` times, or to CANCELLED when its
    /// owner asked for that. Safe to run in every server process at once: rows
    /// another process (or a worker's CompleteJob) holds are skipped, and a
    /// worker's late write then finds its lease gone.
    pub async fn expire_leases(&self, max_attempts: i32) -> Result<Expired, StorageError> {
        let outcomes: Vec<String> = sqlx::query_scalar(concat!(
            "WITH expired AS (
                 SELECT id FROM menu_extraction_jobs
                 WHERE status = 'processing' AND lease_expires_at < now()
                 ORDER BY lease_expires_at
                 LIMIT 1000
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE menu_extraction_jobs AS j
             SET status = CASE
                     WHEN j.cancel_requested THEN 'cancelled'
                     WHEN j.attempt >= $1 THEN 'failed'
                     ELSE 'queued'
                 END,
                 error_message = CASE
                     WHEN j.cancel_requested OR j.attempt < $1 THEN j.error_message
                     ELSE format('lease expired after %s attempts (the most allowed is %s): '
                                 'the last worker, %s, stopped renewing its lease',
                                 j.attempt, $1, COALESCE(j.worker_id, 'unknown'))
                 END,
                 completed_at = CASE WHEN j.cancel_requested OR j.attempt >= $1 THEN now() END,
                 -- A requeued job has no lease; a finished one keeps the id of the
                 -- lease it ended under (see why_not).
                 lease_id = CASE WHEN j.cancel_requested OR j.attempt >= $1 THEN j.lease_id END,
                 lease_expires_at = NULL,
                 ",
            touched!(),
            "
             FROM expired
             WHERE j.id = expired.id
             RETURNING j.status"
        ))
        .bind(max_attempts)
        .fetch_all(&self.pool)
        .await?;
        let mut expired = Expired::default();
        for status in outcomes {
            match JobStatus::parse(&status) {
                Some(JobStatus::Queued) => expired.requeued += 1,
                Some(JobStatus::Failed) => expired.failed += 1,
                _ => expired.cancelled += 1,
            }
        }
        Ok(expired)
    }
}

/// The claim of [`Storage::claim_batch`], on `executor` (the pool, or a
/// submission's transaction: see [`crate::handoff`]), at the instant `at`
/// (its start, `now()`, when `None`). A submission claims at the instant it
/// created its jobs, which is later than its transaction's start: a job is
/// never started (or updated) before it was created.
pub(super) async fn claim<'c>(
    executor: impl PgExecutor<'c>,
    requests: &[ClaimRequest],
    at: Option<DateTime<Utc>>,
) -> Result<Vec<Vec<ClaimedJob>>, StorageError> {
    // The caller of each slot, in the order slots are filled.
    let most = requests.iter().map(|r| r.max_jobs).max().unwrap_or(0);
    let slots: Vec<i32> = (0..most)
        .flat_map(|round| {
            (0_i32..)
                .zip(requests)
                .filter(move |(_, r)| round < r.max_jobs)
                .map(|(caller, _)| caller)
        })
        .collect();
    let workers: Vec<&str> = requests.iter().map(|r| r.worker_id.as_str()).collect();
    let leases: Vec<i64> = requests.iter().map(|r| millis(r.lease)).collect();
    let dealt = sqlx::query_as::<_, Dealt>(CLAIM)
        .bind(slots)
        .bind(workers)
        .bind(leases)
        .bind(at)
        .fetch_all(executor)
        .await?;
    let mut claimed: Vec<Vec<ClaimedJob>> = requests.iter().map(|_| Vec::new()).collect();
    for Dealt { caller, job } in dealt {
        if let Some(jobs) = usize::try_from(caller)
            .ok()
            .and_then(|c| claimed.get_mut(c))
        {
            jobs.push(job);
        }
    }
    for jobs in &mut claimed {
        jobs.sort_by_key(|claimed| (claimed.job.created_at, claimed.job.id.0));
    }
    Ok(claimed)
}
