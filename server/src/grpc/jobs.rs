//! `jobq.v1.JobQueueService`.

use std::pin::Pin;

use jobq_proto::pb;
use jobq_proto::pb::job_queue_service_server::JobQueueService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::not_built_yet;
use crate::convert::JobRef;
use crate::error::Error;
use crate::job::{ListCursor, ListQuery, NewJob};
use crate::page_token::PageToken;
use crate::storage::Storage;

/// Submits and reads jobs.
#[derive(Debug, Clone)]
pub struct JobQueueApi {
    storage: Storage,
}

impl JobQueueApi {
    /// The service over `storage`.
    pub fn new(storage: Storage) -> Self {
        Self { storage }
    }
}

#[tonic::async_trait]
impl JobQueueService for JobQueueApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let new = NewJob::try_from(request.into_inner())?;
        let submitted = self.storage.submit_job(&new).await.map_err(Error::from)?;
        tracing::info!(
            job_id = %submitted.job.id.0,
            deduplicated = submitted.deduplicated,
            force = new.force,
            "job submitted"
        );
        Ok(Response::new(pb::SubmitJobResponse {
            job: Some(submitted.job.into()),
            deduplicated: submitted.deduplicated,
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let JobRef { job_id, user_id } = request.into_inner().try_into()?;
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
        let query = ListQuery::try_from(request.into_inner())?;
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
        _: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::RetryJobResponse>, Status> {
        Err(not_built_yet("RetryJob"))
    }

    async fn check_quota(
        &self,
        _: Request<pb::CheckQuotaRequest>,
    ) -> Result<Response<pb::CheckQuotaResponse>, Status> {
        Err(not_built_yet("CheckQuota"))
    }

    async fn cancel_job(
        &self,
        _: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        Err(not_built_yet("CancelJob"))
    }

    type WatchJobsStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchJobsResponse, Status>> + Send + 'static>>;

    async fn watch_jobs(
        &self,
        _: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        Err(not_built_yet("WatchJobs"))
    }
}
