#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod admin;
mod connect;
mod error;
mod job;
mod reporter;
mod runner;
mod watch;
mod worker;

use jobq_proto::pb::job_queue_service_client::JobQueueServiceClient;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use uuid::Uuid;

use connect::{Connection, Idempotence, unary};

pub use admin::AdminClient;
pub use connect::{ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, RetryPolicy};
pub use error::{Error, FieldViolation};
pub use job::{Job, JobPage, ListJobs, Quota, QuotaWindow, SubmitJob, Submitted, TokenUsage};
/// The generated protocol types, for what the typed API does not cover.
pub use jobq_proto::pb;
/// A job's life-cycle state.
pub use jobq_proto::pb::JobStatus;
pub use runner::{Cancellation, JobContext, Worker, WorkerBuilder, WorkerReport};
pub use watch::{EventKind, JobEvent, WaitOptions, WatchJobs};
pub use worker::{ClaimJobs, ClaimedJob, Completion, Lease, Renewed, WorkerClient};

/// A client of `jobq.v1.JobQueueService`. Cheap to clone and safe to share
/// between tasks: clones share one connection (an HTTP/2 channel that reconnects
/// by itself) and its settings.
#[derive(Debug, Clone)]
pub struct JobQueueClient {
    connection: Connection,
}

impl JobQueueClient {
    /// Configures a connection to the server at `url` (`http://host:port`, or
    /// `https://` for TLS): API key, deadlines, retries, CA. See [`ClientBuilder`].
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// Connects to the server at `url` (e.g. `http://127.0.0.1:50051`) with the
    /// default settings and no API key.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] when the URL is not an `http(s)://` URI;
    /// [`Error::Connect`] when the server cannot be reached.
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(url).build().await
    }

    /// A client over an existing channel, with the default call policy and no
    /// key.
    pub fn from_channel(channel: Channel) -> Self {
        Self::from_connection(Connection::plain(channel))
    }

    pub(crate) fn from_connection(connection: Connection) -> Self {
        Self { connection }
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The generated client, for RPCs or options the typed API does not cover.
    /// Its calls carry neither the API key nor the deadline: add them to each
    /// request.
    pub fn raw(&self) -> JobQueueServiceClient<Channel> {
        JobQueueServiceClient::new(self.connection.channel())
    }

    /// Submits a job, or gets back the live job that already matches it.
    ///
    /// Safe to retry: every [`SubmitJob`] carries a `request_id` (made when it is
    /// built), and the server returns the job an earlier call with the same
    /// `request_id` created instead of creating another, even with `force`. The
    /// client retries a submission that failed with `UNAVAILABLE` on that basis.
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient, user: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// let hash = jobq_client::sha256_hex(b"photo bytes");
    /// let submitted = client
    ///     .submit_job(jobq_client::SubmitJob::new(user, "https://cdn.example/m.jpg", hash).force(true))
    ///     .await?;
    /// assert!(!submitted.deduplicated);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming each bad field; [`Error::QuotaExceeded`]
    /// or [`Error::RateLimited`] when the user's plan allows no new job now;
    /// [`Error::Unavailable`] when the server or its database stayed down through
    /// the retries.
    pub async fn submit_job(&self, request: SubmitJob) -> Result<Submitted, Error> {
        let response = unary!(
            self.connection,
            Idempotence::Safe,
            JobQueueServiceClient::submit_job,
            pb::SubmitJobRequest::from(request)
        )?;
        Submitted::try_from(response)
    }

    /// Reads one of `user_id`'s jobs.
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient, user: uuid::Uuid, job: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// let job = client.get_job(user, job).await?;
    /// println!("{:?}", job.status);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::JobNotFound`] when the job does not exist or is another user's.
    pub async fn get_job(&self, user_id: Uuid, job_id: Uuid) -> Result<Job, Error> {
        let request = pb::GetJobRequest {
            job_id: job_id.to_string(),
            user_id: user_id.to_string(),
        };
        unary!(
            self.connection,
            Idempotence::Safe,
            JobQueueServiceClient::get_job,
            request
        )?
        .job
        .ok_or_else(|| Error::Decode("GetJobResponse without a job".into()))?
        .try_into()
    }

    /// Retries one of `user_id`'s FAILED jobs: a new QUEUED job with the same
    /// parameters. Retrying the same failed job again returns the same retry.
    /// Retries do not count against the user's limits.
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient, user: uuid::Uuid, failed: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// let retry = client.retry_job(user, failed).await?;
    /// assert_eq!(retry.retry_of_job_id, Some(failed));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::JobNotFound`]; [`Error::InvalidStatus`] when the job is not FAILED;
    /// [`Error::MaxRetriesExceeded`] when it is already the third retry.
    pub async fn retry_job(&self, user_id: Uuid, job_id: Uuid) -> Result<Job, Error> {
        let request = pb::RetryJobRequest {
            job_id: job_id.to_string(),
            user_id: user_id.to_string(),
        };
        unary!(
            self.connection,
            Idempotence::Safe,
            JobQueueServiceClient::retry_job,
            request
        )?
        .job
        .ok_or_else(|| Error::Decode("RetryJobResponse without a job".into()))?
        .try_into()
    }

    /// Cancels one of `user_id`'s jobs: a QUEUED job is CANCELLED at once; a
    /// PROCESSING one is marked `cancel_requested` and settles as CANCELLED when
    /// its worker reports.
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient, user: uuid::Uuid, job: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// let job = client.cancel_job(user, job).await?;
    /// println!("{:?}, cancel requested: {}", job.status, job.cancel_requested);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::JobNotFound`]; [`Error::InvalidStatus`] when the job already
    /// finished (a retried cancellation whose first attempt landed on a QUEUED job
    /// gets this too, with `current` CANCELLED).
    pub async fn cancel_job(&self, user_id: Uuid, job_id: Uuid) -> Result<Job, Error> {
        let request = pb::CancelJobRequest {
            job_id: job_id.to_string(),
            user_id: user_id.to_string(),
        };
        unary!(
            self.connection,
            Idempotence::Safe,
            JobQueueServiceClient::cancel_job,
            request
        )?
        .job
        .ok_or_else(|| Error::Decode("CancelJobResponse without a job".into()))?
        .try_into()
    }

    /// The user's plan and usage, and whether a new submission would be accepted
    /// now (exactly as SubmitJob would decide).
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient, user: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// let quota = client.check_quota(user).await?;
    /// println!("{} of {:?} this month on {}", quota.monthly.used, quota.monthly.limit, quota.plan);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server or its database is down.
    pub async fn check_quota(&self, user_id: Uuid) -> Result<Quota, Error> {
        let request = pb::CheckQuotaRequest {
            user_id: user_id.to_string(),
        };
        Quota::try_from(unary!(
            self.connection,
            Idempotence::Safe,
            JobQueueServiceClient::check_quota,
            request
        )?)
    }

    /// Reads a page of a user's jobs, newest first.
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient, user: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// let mut request = jobq_client::ListJobs::new(user).page_size(50);
    /// loop {
    ///     let page = client.list_jobs(request.clone()).await?;
    ///     for job in &page.jobs {
    ///         println!("{} {:?}", job.id, job.status);
    ///     }
    ///     match page.next_page_token {
    ///         Some(token) => request = request.page_token(token),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a page size out of range or a page token
    /// that belongs to another listing.
    pub async fn list_jobs(&self, request: ListJobs) -> Result<JobPage, Error> {
        JobPage::try_from(unary!(
            self.connection,
            Idempotence::Safe,
            JobQueueServiceClient::list_jobs,
            pb::ListJobsRequest::from(request)
        )?)
    }
}

/// The lower-case hex SHA-256 of `bytes`: the `image_sha256` of a photo.
///
/// ```
/// assert_eq!(
///     jobq_client::sha256_hex(b"abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes.as_ref())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}
