//! `jobq.v1.WorkerService`: the schema is in place; the worker protocol is not
//! built yet, and every RPC answers UNIMPLEMENTED.

use jobq_proto::pb;
use jobq_proto::pb::worker_service_server::WorkerService;
use tonic::{Request, Response, Status};

use super::not_built_yet;

/// The worker protocol.
#[derive(Debug, Clone, Default)]
pub struct WorkerApi;

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn claim_jobs(
        &self,
        _: Request<pb::ClaimJobsRequest>,
    ) -> Result<Response<pb::ClaimJobsResponse>, Status> {
        Err(not_built_yet("ClaimJobs"))
    }

    async fn heartbeat(
        &self,
        _: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Err(not_built_yet("Heartbeat"))
    }

    async fn complete_job(
        &self,
        _: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        Err(not_built_yet("CompleteJob"))
    }

    async fn fail_job(
        &self,
        _: Request<pb::FailJobRequest>,
    ) -> Result<Response<pb::FailJobResponse>, Status> {
        Err(not_built_yet("FailJob"))
    }
}
