//! `jobq.v1.WorkerService`: claim jobs under leases, keep leases alive, report
//! outcomes. A write under a lease that is no longer the job's current one is
//! refused with LEASE_LOST and changes nothing.

use std::time::Duration;

use jobq_proto::pb;
use jobq_proto::pb::worker_service_server::WorkerService;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::convert::{self, WorkerLimits, status_to_pb, timestamp};
use crate::delivery::Delivery;
use crate::error::Error;
use crate::group_commit::GroupCommit;
use crate::handoff::Handoff;
use crate::job::{ClaimRequest, ClaimedJob, Completion, Failure, Job};
use crate::storage::leases::LeaseRefusal;
use crate::storage::{Storage, StorageError};
use crate::watch::ChangeFeed;

/// The worker protocol.
#[derive(Debug, Clone)]
pub struct WorkerApi {
    storage: Storage,
    feed: ChangeFeed,
    handoff: Handoff,
    limits: WorkerLimits,
    /// How often a parked ClaimJobs looks at the table even without a
    /// notification (a safety net; notifications are the main path).
    safety_poll: Duration,
    stop: watch::Receiver<bool>,
    claims: GroupCommit<ClaimRequest, Claimed>,
    completions: GroupCommit<Completion, Completed>,
}

/// What a claim came to: its jobs, on their way to the caller.
type Claimed = Result<Delivery, StorageError>;

/// What a completion came to.
type Completed = Result<Result<Job, LeaseRefusal>, StorageError>;

/// Most claims answered by one statement.
const CLAIM_BATCH: usize = 32;

/// Most claim statements at once (see [`crate::group_commit`] and
/// [`SECOND_AT_ONCE`]).
const CLAIM_IN_FLIGHT: usize = 2;

/// Most completions applied in one statement.
const COMPLETE_BATCH: usize = 256;

/// Most completion statements at once, each holding one pooled connection (see
/// [`crate::group_commit`] and [`SECOND_AT_ONCE`]).
const COMPLETE_IN_FLIGHT: usize = 2;

/// How long the next claim (or completion) batch waits for the one running
/// before it may run beside it: not at all, where submissions wait
/// [`SPARE_AFTER`](crate::group_commit::SPARE_AFTER). Claims skip each other's
/// rows (`SKIP LOCKED`) and completions name their own jobs, so two statements
/// at once use both cores of
/// a two-core machine, where one at a time left a core idle in the drain (the
/// machine 74-86% busy). Measured by issue 8's benchmark (single-scenario runs
/// on fresh servers, alternating, 2026-12-01, pgbench about 17,000 tps): the
/// drain 10,304-14,181 jobs/s (mean 12,810) with a 20 ms wait against
/// 13,188-14,656 (mean 13,765) without, with CompleteJobs 18,214-24,121 (mean
/// 21,740) against 21,277-25,833 (mean 23,782), six runs each; steady
/// unchanged within its noise (mean 5,227 jobs/s against 5,275 in six runs
/// each, with CompleteJobs 5,734 against 5,374 in three). Submissions keep
/// their wait: one batch at a time is what makes theirs grow.
const SECOND_AT_ONCE: Duration = Duration::ZERO;

impl WorkerApi {
    /// The service over `storage`, woken by `feed`; parked calls wait in
    /// `handoff`, where submissions may serve them, and return early once
    /// `stop` turns true. Must be called within a Tokio runtime.
    pub fn new(
        storage: Storage,
        feed: ChangeFeed,
        handoff: Handoff,
        limits: WorkerLimits,
        safety_poll: Duration,
        stop: watch::Receiver<bool>,
    ) -> Self {
        // Concurrent claims, and concurrent completions, share statements (see
        // crate::group_commit). Claimers woken by the same jobs then share them
        // in one statement, instead of each running its own and all but one
        // finding nothing.
        let claims = GroupCommit::spawn(CLAIM_BATCH, CLAIM_IN_FLIGHT, SECOND_AT_ONCE, {
            let storage = storage.clone();
            move |batch: Vec<ClaimRequest>| {
                let storage = storage.clone();
                async move {
                    match storage.claim_batch(&batch).await {
                        Ok(claimed) => claimed.into_iter().map(Ok).collect(),
                        Err(error) => batch.iter().map(|_| Err(error.shared())).collect(),
                    }
                }
            }
        });
        let completions = GroupCommit::spawn(COMPLETE_BATCH, COMPLETE_IN_FLIGHT, SECOND_AT_ONCE, {
            let storage = storage.clone();
            move |batch: Vec<Completion>| {
                let storage = storage.clone();
                async move {
                    match storage.complete_jobs(&batch).await {
                        Ok(outcomes) => outcomes,
                        Err(error) => batch.iter().map(|_| Err(error.shared())).collect(),
                    }
                }
            }
        });
        Self {
            storage,
            feed,
            handoff,
            limits,
            safety_poll,
            stop,
            claims,
            completions,
        }
    }

    /// Claims, parking until a submission hands it jobs, work is queued, the
    /// wait ends, or the server stops. A parked call holds no database
    /// connection. Jobs claimed for it are given back if the call is dropped
    /// before it takes them.
    async fn claim_waiting(&self, request: &ClaimRequest) -> Result<Delivery, Error> {
        let deadline = Instant::now() + request.wait;
        let mut stop = self.stop.clone();
        loop {
            // Subscribe before looking, so that work queued in between wakes us.
            let mut queued = self.feed.queued_work();
            let claimed = self.claims.call(request.clone()).await??;
            let now = Instant::now();
            if !claimed.is_empty() || now >= deadline {
                return Ok(claimed);
            }
            let nap = (deadline - now).min(self.safety_poll);
            let mut ticket = self.handoff.park(request.clone());
            let woke = tokio::select! {
                handed = ticket.handed() => Woke::Handed(handed),
                changed = queued.changed() => if changed.is_ok() { Woke::Look } else { Woke::Stop },
                () = tokio::time::sleep(nap) => Woke::Look,
                _ = stop.wait_for(|stop| *stop) => Woke::Stop,
            };
            let stopping = matches!(woke, Woke::Stop);
            let handed = match woke {
                Woke::Handed(handed) => handed,
                // A submission that took the claim answers it even when
                // something else woke us first.
                Woke::Look | Woke::Stop => ticket.leave().await,
            };
            if let Some(jobs) = handed.filter(|jobs| !jobs.is_empty()) {
                return Ok(jobs);
            }
            if stopping {
                return Ok(Delivery::empty());
            }
        }
    }
}

/// What ended a parked claim's wait.
enum Woke {
    /// A submission answered it (`None`: its transaction did not commit).
    Handed(Option<Delivery>),
    /// Work may be queued, or it is time for the safety poll: look again.
    Look,
    /// The server is stopping.
    Stop,
}

/// How long before the caller's deadline a parked ClaimJobs gives up waiting.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// The caller's deadline, from the `grpc-timeout` header (`<digits><unit>`, unit
/// one of H M S m u n).
fn client_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The error for a write under a lease that did not apply.
fn refusal_error(refusal: LeaseRefusal, operation: &'static str) -> Error {
    match refusal {
        LeaseRefusal::NotFound => Error::JobNotFound,
        LeaseRefusal::Finished(stored) => Error::InvalidStatus {
            operation,
            current: status_to_pb(&stored),
        },
        LeaseRefusal::LeaseLost => Error::LeaseLost,
    }
}

/// [`refusal_error`], as the call's status.
fn refused(refused: LeaseRefusal, operation: &'static str) -> Status {
    refusal_error(refused, operation).into()
}

/// What CompleteJob and CompleteJobs say of a finished job.
const COMPLETE_FINISHED: &str = "CompleteJob (the job is finished)";

fn claimed_to_pb(claimed: ClaimedJob) -> pb::ClaimedJob {
    let ClaimedJob {
        job,
        lease_id,
        lease_expires_at,
    } = claimed;
    pb::ClaimedJob {
        job: Some(pb::Job::from(job)),
        lease_id: lease_id.0.to_string(),
        lease_expires_at: Some(timestamp(lease_expires_at)),
    }
}

fn log_outcome(job: &Job, outcome: &str) {
    tracing::info!(job_id = %job.id.0, status = %job.status, attempt = job.attempt, outcome, "job finished");
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn claim_jobs(
        &self,
        request: Request<pb::ClaimJobsRequest>,
    ) -> Result<Response<pb::ClaimJobsResponse>, Status> {
        let deadline = client_deadline(request.metadata());
        let mut request = ClaimRequest::parse(request.into_inner(), &self.limits)?;
        // Return before the caller gives up: jobs claimed for a caller that has
        // left would sit leased until their lease expires.
        if let Some(deadline) = deadline {
            request.wait = request.wait.min(deadline.saturating_sub(DEADLINE_MARGIN));
        }
        // From here on nothing waits: the jobs are the caller's.
        let claimed = self.claim_waiting(&request).await?.take();
        if !claimed.is_empty() {
            tracing::info!(worker_id = %request.worker_id, claimed = claimed.len(), "jobs claimed");
        }
        Ok(Response::new(pb::ClaimJobsResponse {
            jobs: claimed.into_iter().map(claimed_to_pb).collect(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (lease, extend_by) = convert::heartbeat(request.into_inner())?;
        let renewed = self
            .storage
            .heartbeat(lease, extend_by)
            .await
            .map_err(Error::from)?
            .map_err(|refusal| refused(refusal, "Heartbeat (the job is finished)"))?;
        Ok(Response::new(pb::HeartbeatResponse {
            lease_expires_at: Some(timestamp(renewed.lease_expires_at)),
            cancel_requested: renewed.cancel_requested,
        }))
    }

    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let completion = Completion::parse(request.into_inner(), &self.limits)?;
        let job = self
            .completions
            .call(completion)
            .await
            .map_err(Error::from)?
            .map_err(Error::from)?
            .map_err(|refusal| refused(refusal, COMPLETE_FINISHED))?;
        log_outcome(&job, "completed");
        Ok(Response::new(pb::CompleteJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn complete_jobs(
        &self,
        request: Request<pb::CompleteJobsRequest>,
    ) -> Result<Response<pb::CompleteJobsResponse>, Status> {
        use pb::complete_jobs_result::Outcome;
        let completions = convert::completions(request.into_inner(), &self.limits)?;
        // The call's completions go together into one statement, shared with
        // concurrent CompleteJob and CompleteJobs calls.
        let outcomes = self
            .completions
            .call_many(completions)
            .await
            .map_err(Error::from)?;
        // Every completion failed on the database (a completion applied would
        // be a job): nothing of the call was written, and the call fails as a
        // whole, so that it is retried as one.
        if let Some(Err(error)) = outcomes.first()
            && outcomes.iter().all(Result::is_err)
        {
            return Err(Error::from(error.shared()).into());
        }
        let results = outcomes
            .into_iter()
            .map(|outcome| {
                let outcome = match outcome {
                    Ok(Ok(job)) => {
                        log_outcome(&job, "completed");
                        Outcome::Job(job.into())
                    }
                    Ok(Err(refused)) => {
                        Outcome::Error(refusal_error(refused, COMPLETE_FINISHED).into_rpc_status())
                    }
                    Err(error) => Outcome::Error(Error::from(error).into_rpc_status()),
                };
                pb::CompleteJobsResult {
                    outcome: Some(outcome),
                }
            })
            .collect();
        Ok(Response::new(pb::CompleteJobsResponse { results }))
    }

    async fn fail_job(
        &self,
        request: Request<pb::FailJobRequest>,
    ) -> Result<Response<pb::FailJobResponse>, Status> {
        let failure = Failure::try_from(request.into_inner())?;
        let job = self
            .storage
            .fail_job(&failure)
            .await
            .map_err(Error::from)?
            .map_err(|refusal| refused(refusal, "FailJob (the job is finished)"))?;
        log_outcome(&job, "failed");
        Ok(Response::new(pb::FailJobResponse {
            job: Some(job.into()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grpc_timeouts() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(client_deadline(&metadata), None);
        for (value, expected) in [
            ("2S", Duration::from_secs(2)),
            ("1500m", Duration::from_millis(1500)),
            ("1M", Duration::from_secs(60)),
        ] {
            metadata.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(client_deadline(&metadata), Some(expected), "{value}");
        }
        metadata.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(client_deadline(&metadata), None);
    }
}
