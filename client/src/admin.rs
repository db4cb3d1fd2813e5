//! `jobq.v1.AdminService`: operators' controls.

use jobq_proto::pb;
use jobq_proto::pb::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::Error;

/// A client of `jobq.v1.AdminService`. Cheap to clone; clones share one connection.
#[derive(Debug, Clone)]
pub struct AdminClient {
    inner: AdminServiceClient<Channel>,
}

impl AdminClient {
    /// Connects to the server at `url` (e.g. `http://127.0.0.1:50051`).
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] or [`Error::Connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Ok(Self::from_channel(
            crate::connect_channel(url.into()).await?,
        ))
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            inner: AdminServiceClient::new(channel),
        }
    }

    /// Puts `user_id` on the plan called `plan`; returns the plan now in force.
    ///
    /// ```no_run
    /// # async fn example(admin: jobq_client::AdminClient, user: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// admin.set_user_plan(user, "premium").await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `plan` when the server has no such plan.
    pub async fn set_user_plan(
        &self,
        user_id: Uuid,
        plan: impl Into<String>,
    ) -> Result<String, Error> {
        let request = pb::SetUserPlanRequest {
            user_id: user_id.to_string(),
            plan: plan.into(),
        };
        Ok(self
            .inner
            .clone()
            .set_user_plan(request)
            .await?
            .into_inner()
            .plan)
    }

    /// The plan in force for `user_id` (`free` when none was set).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] or [`Error::Unavailable`].
    pub async fn get_user_plan(&self, user_id: Uuid) -> Result<String, Error> {
        let request = pb::GetUserPlanRequest {
            user_id: user_id.to_string(),
        };
        Ok(self
            .inner
            .clone()
            .get_user_plan(request)
            .await?
            .into_inner()
            .plan)
    }
}
