//! `jobq.v1.JobQueueService`.

use std::pin::Pin;
use std::sync::Arc;

use jobq_proto::pb;
use jobq_proto::pb::job_queue_service_server::JobQueueService;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::convert::{self, JobRef, status_to_pb};
use crate::error::Error;
use crate::group_commit::{GroupCommit, SPARE_AFTER};
use crate::handoff::Handoff;
use crate::job::{ListCursor, ListQuery, NewJob, UserId};
use crate::page_token::PageToken;
use crate::plans::Plans;
use crate::storage::jobs::{CancelOutcome, RetryOutcome};
use crate::storage::submit::SubmitOutcome;
use crate::storage::{Storage, StorageError};
use crate::watch::{ChangeFeed, StreamSlots, WatchStream};

/// Most retries of one submission: RetryJob refuses a failed job whose
/// `retry_count` has reached it.
pub const MAX_RETRIES: i32 = 3;

/// What WatchJobs streams share: the change feed, the caps, and the shutdown signal.
#[derive(Debug, Clone)]
pub struct Watching {
    /// The process's change feed.
    pub feed: ChangeFeed,
    /// Caps on open streams.
    pub slots: Arc<StreamSlots>,
    /// Turns true when the server shuts down; streams then end with UNAVAILABLE.
    pub stop: watch::Receiver<bool>,
}

/// Most submissions decided in one transaction.
const SUBMIT_BATCH: usize = 128;

/// Most submission transactions at once (each holds one pooled connection):
/// one, and a second when the next batch has waited [`SPARE_AFTER`] for the
/// first (see [`crate::group_commit`]).
const SUBMIT_IN_FLIGHT: usize = 2;

/// Submits and reads jobs.
#[derive(Debug, Clone)]
pub struct JobQueueApi {
    storage: Storage,
    plans: Arc<Plans>,
    watch: Watching,
    submissions: GroupCommit<NewJob, Result<SubmitOutcome, StorageError>>,
}

impl JobQueueApi {
    /// The service over `storage`, judging limits by `plans`, streaming from
    /// `watch`. Concurrent submissions share transactions (see
    /// [`crate::group_commit`]), which hand their new jobs to the claims parked
    /// in `handoff`. Must be called within a Tokio runtime.
    pub fn new(storage: Storage, plans: Arc<Plans>, watch: Watching, handoff: Handoff) -> Self {
        let submissions = GroupCommit::spawn(SUBMIT_BATCH, SUBMIT_IN_FLIGHT, SPARE_AFTER, {
            let storage = storage.clone();
            let plans = plans.clone();
            move |batch: Vec<NewJob>| {
                let storage = storage.clone();
                let plans = plans.clone();
                let handoff = handoff.clone();
                async move { storage.submit_jobs(&batch, &plans, &handoff).await }
            }
        });
        Self {
            storage,
            plans,
            watch,
            submissions,
        }
    }
}

#[tonic::async_trait]
impl JobQueueService for JobQueueApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = auth::principal(&request);
        let new = NewJob::try_from(request.into_inner())?;
        caller.may_act_for(new.user_id)?;
        let (user_id, force) = (new.user_id, new.force);
        let (job, deduplicated) = match self
            .submissions
            .call(new)
            .await
            .map_err(Error::from)?
            .map_err(Error::from)?
        {
            SubmitOutcome::Created(job) => {
                // Claimers parked in this process that the submission's own
                // claim did not serve need not wait for the NOTIFY.
                self.watch.feed.wake_claimers();
                (job, false)
            }
            SubmitOutcome::Deduplicated(job) => (job, true),
            SubmitOutcome::Refused(status) => {
                return Err(Error::refused(user_id, status).into());
            }
            SubmitOutcome::RequestIdReused => {
                return Err(Error::invalid(
                    "request_id",
                    "was already used by this user for a submission with other parameters",
                )
                .into());
            }
        };
        tracing::info!(job_id = %job.id.0, deduplicated, force, "job submitted");
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(job.into()),
            deduplicated,
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let caller = auth::principal(&request);
        let JobRef { job_id, user_id } = request.into_inner().try_into()?;
        caller.may_act_for(user_id)?;
        let job = self
            .storage
            .get_job(job_id, user_id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::JobNotFound)?;
        Ok(Response::new(pb::GetJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = auth::principal(&request);
        let query = ListQuery::try_from(request.into_inner())?;
        caller.may_act_for(query.user_id)?;
        let (jobs, more) = self.storage.list_jobs(&query).await.map_err(Error::from)?;
        let next_page_token = match jobs.last() {
            Some(last) if more => PageToken::encode(
                query.user_id,
                query.status,
                ListCursor {
                    created_at: last.created_at,
                    id: last.id,
                },
            ),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.into_iter().map(pb::Job::from).collect(),
            next_page_token,
        }))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        let caller = auth::principal(&request);
        let JobRef { job_id, user_id } = request.into_inner().try_into()?;
        caller.may_act_for(user_id)?;
        let outcome = self
            .storage
            .retry_job(job_id, user_id, MAX_RETRIES)
            .await
            .map_err(Error::from)?;
        let job = match outcome {
            RetryOutcome::Created(job) => {
                self.watch.feed.wake_claimers();
                tracing::info!(job_id = %job.id.0, retry_of = %job_id.0, retry_count = job.retry_count, "job retried");
                job
            }
            RetryOutcome::Existing(job) => job,
            RetryOutcome::NotFound => return Err(Error::JobNotFound.into()),
            RetryOutcome::InvalidStatus(stored) => {
                return Err(Error::InvalidStatus {
                    operation: "RetryJob (it needs a FAILED job)",
                    current: status_to_pb(&stored),
                }
                .into());
            }
            RetryOutcome::MaxRetriesExceeded { retry_count } => {
                return Err(Error::MaxRetriesExceeded {
                    retry_count,
                    max_retries: MAX_RETRIES,
                }
                .into());
            }
        };
        Ok(Response::new(pb::RetryJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn check_quota(
        &self,
        request: Request<pb::CheckQuotaRequest>,
    ) -> Result<Response<pb::CheckQuotaResponse>, Status> {
        let caller = auth::principal(&request);
        let user_id = UserId::try_from(request.into_inner())?;
        caller.may_act_for(user_id)?;
        let status = self
            .storage
            .quota_status(user_id, &self.plans)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(status.into()))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = auth::principal(&request);
        let JobRef { job_id, user_id } = request.into_inner().try_into()?;
        caller.may_act_for(user_id)?;
        let job = match self
            .storage
            .cancel_job(job_id, user_id)
            .await
            .map_err(Error::from)?
        {
            CancelOutcome::Done(job) => *job,
            CancelOutcome::NotFound => return Err(Error::JobNotFound.into()),
            CancelOutcome::Finished(stored) => {
                return Err(Error::InvalidStatus {
                    operation: "CancelJob (the job is finished)",
                    current: status_to_pb(&stored),
                }
                .into());
            }
        };
        tracing::info!(job_id = %job_id.0, status = %job.status, cancel_requested = job.cancel_requested, "job cancelled");
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(job.into()),
        }))
    }

    type WatchJobsStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchJobsResponse, Status>> + Send + 'static>>;

    async fn watch_jobs(
        &self,
        request: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let caller = auth::principal(&request);
        let (filter, resume) = convert::watch_request(request.into_inner())?;
        match filter.user_id {
            Some(user) => caller.may_act_for(user)?,
            None => caller.may_watch_all()?,
        }
        let slot = self.watch.slots.acquire(filter.user_id, caller.key_id)?;
        let storage = self.storage.clone();
        let stop = self.watch.stop.clone();
        let stream = match resume {
            None => WatchStream::fresh(storage, &self.watch.feed, filter, slot, stop).await?,
            Some(from) => {
                WatchStream::resumed(storage, &self.watch.feed, filter, from, slot, stop).await?
            }
        };
        Ok(Response::new(Box::pin(stream.into_stream())))
    }
}
