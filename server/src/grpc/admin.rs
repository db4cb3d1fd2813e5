//! `jobq.v1.AdminService`: users' plans. API keys are not built yet and answer
//! UNIMPLEMENTED.

use std::sync::Arc;

use jobq_proto::pb;
use jobq_proto::pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::not_built_yet;
use crate::convert::PlanAssignment;
use crate::error::Error;
use crate::job::UserId;
use crate::plans::Plans;
use crate::storage::Storage;

/// Operators' controls.
#[derive(Debug, Clone)]
pub struct AdminApi {
    storage: Storage,
    plans: Arc<Plans>,
}

impl AdminApi {
    /// The service over `storage`, knowing `plans`.
    pub fn new(storage: Storage, plans: Arc<Plans>) -> Self {
        Self { storage, plans }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn set_user_plan(
        &self,
        request: Request<pb::SetUserPlanRequest>,
    ) -> Result<Response<pb::SetUserPlanResponse>, Status> {
        let PlanAssignment { user_id, plan } =
            PlanAssignment::parse(request.into_inner(), &self.plans)?;
        self.storage
            .set_user_plan(user_id, &plan)
            .await
            .map_err(Error::from)?;
        tracing::info!(user_id = %user_id.0, plan, "user plan set");
        Ok(Response::new(pb::SetUserPlanResponse {
            user_id: user_id.0.to_string(),
            plan,
        }))
    }

    async fn get_user_plan(
        &self,
        request: Request<pb::GetUserPlanRequest>,
    ) -> Result<Response<pb::GetUserPlanResponse>, Status> {
        let user_id = UserId::try_from(request.into_inner())?;
        let stored = self
            .storage
            .stored_plan(user_id)
            .await
            .map_err(Error::from)?;
        let plan = self.plans.effective(stored.as_deref()).name.clone();
        Ok(Response::new(pb::GetUserPlanResponse {
            user_id: user_id.0.to_string(),
            plan,
        }))
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
