//! `jobq.v1.AdminService`: the schema is in place; plans and keys are not built
//! yet, and every RPC answers UNIMPLEMENTED.

use jobq_proto::pb;
use jobq_proto::pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::not_built_yet;

/// Operators' controls.
#[derive(Debug, Clone, Default)]
pub struct AdminApi;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn set_user_plan(
        &self,
        _: Request<pb::SetUserPlanRequest>,
    ) -> Result<Response<pb::SetUserPlanResponse>, Status> {
        Err(not_built_yet("SetUserPlan"))
    }

    async fn get_user_plan(
        &self,
        _: Request<pb::GetUserPlanRequest>,
    ) -> Result<Response<pb::GetUserPlanResponse>, Status> {
        Err(not_built_yet("GetUserPlan"))
    }

    async fn create_api_key(
        &self,
        _: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        Err(not_built_yet("CreateApiKey"))
    }

    async fn list_api_keys(
        &self,
        _: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        Err(not_built_yet("ListApiKeys"))
    }

    async fn revoke_api_key(
        &self,
        _: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        Err(not_built_yet("RevokeApiKey"))
    }
}
