//! `jobq.v1.AdminService`: users' plans and API keys (admin keys only: the auth
//! layer admits no other role here).

use std::sync::Arc;

use jobq_proto::pb;
use jobq_proto::pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use crate::auth::{self, Role};
use crate::convert::{self, PlanAssignment, timestamp};
use crate::error::Error;
use crate::job::UserId;
use crate::plans::Plans;
use crate::storage::Storage;
use crate::storage::keys::ApiKeyRecord;

fn api_key(record: ApiKeyRecord) -> pb::ApiKey {
    let role = match Role::parse(&record.role) {
        Some(Role::Admin) => pb::ApiKeyRole::Admin,
        Some(Role::Service) => pb::ApiKeyRole::Service,
        Some(Role::User) => pb::ApiKeyRole::User,
        Some(Role::Worker) => pb::ApiKeyRole::Worker,
        None => pb::ApiKeyRole::Unspecified,
    };
    pb::ApiKey {
        id: record.id.to_string(),
        name: record.name,
        role: role.into(),
        user_id: record.user_id.map(|u| u.0.to_string()).unwrap_or_default(),
        created_at: Some(timestamp(record.created_at)),
        last_used_at: record.last_used_at.map(timestamp),
        revoked_at: record.revoked_at.map(timestamp),
    }
}

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
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let pb::CreateApiKeyRequest {
            name,
            role,
            user_id,
        } = request.into_inner();
        let role = match pb::ApiKeyRole::try_from(role) {
            Ok(pb::ApiKeyRole::Admin) => Some(Role::Admin),
            Ok(pb::ApiKeyRole::Service) => Some(Role::Service),
            Ok(pb::ApiKeyRole::User) => Some(Role::User),
            Ok(pb::ApiKeyRole::Worker) => Some(Role::Worker),
            Ok(pb::ApiKeyRole::Unspecified) | Err(_) => None,
        };
        let user_id = if user_id.is_empty() {
            None
        } else {
            Some(convert::user_id("user_id", &user_id)?)
        };
        let (record, secret) = auth::create_key(&self.storage, &name, role, user_id).await?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(api_key(record)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let keys = self
            .storage
            .list_keys(request.into_inner().include_revoked)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: keys.into_iter().map(api_key).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let id = request.into_inner().id;
        let id = uuid::Uuid::try_parse(&id)
            .map_err(|_| Error::invalid("id", "must be the key's id (a UUID)"))?;
        let record = self
            .storage
            .revoke_key(id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::KeyNotFound(id))?;
        tracing::info!(key_id = %id, "API key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(api_key(record)),
        }))
    }
}
