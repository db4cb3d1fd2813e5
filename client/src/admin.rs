//! `jobq.v1.AdminService`: operators' controls.

use jobq_proto::pb;
use jobq_proto::pb::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::Error;
use crate::connect::{Connection, Idempotence, unary};

/// A client of `jobq.v1.AdminService`. Cheap to clone; clones share one
/// connection. Made from a configured client with [`crate::JobQueueClient::admin`].
#[derive(Debug, Clone)]
pub struct AdminClient {
    connection: Connection,
}

impl AdminClient {
    /// Connects to the server at `url` (e.g. `http://127.0.0.1:50051`) with the
    /// default settings and no API key.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] or [`Error::Connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Ok(crate::JobQueueClient::connect(url).await?.admin())
    }

    /// An admin client over an existing channel, with the default call policy
    /// and no key.
    pub fn from_channel(channel: Channel) -> Self {
        Self::from_connection(Connection::plain(channel))
    }

    pub(crate) fn from_connection(connection: Connection) -> Self {
        Self { connection }
    }

    /// The generated client, for what the typed API does not cover.
    pub fn raw(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.connection.channel())
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
        let response = unary!(
            self.connection,
            Idempotence::Safe,
            AdminServiceClient::set_user_plan,
            request
        )?;
        Ok(response.plan)
    }

    /// The plan in force for `user_id` (`free` when none was set).
    ///
    /// ```no_run
    /// # async fn example(admin: jobq_client::AdminClient, user: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// println!("{}", admin.get_user_plan(user).await?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] or [`Error::Unavailable`].
    pub async fn get_user_plan(&self, user_id: Uuid) -> Result<String, Error> {
        let request = pb::GetUserPlanRequest {
            user_id: user_id.to_string(),
        };
        let response = unary!(
            self.connection,
            Idempotence::Safe,
            AdminServiceClient::get_user_plan,
            request
        )?;
        Ok(response.plan)
    }
}
