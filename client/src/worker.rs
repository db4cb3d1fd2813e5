//! `jobq.v1.WorkerService`: claim jobs under a lease, keep it alive, report the
//! outcome. Most workers want the [`crate::Worker`] runner, which does all of it.

use std::time::{Duration, SystemTime};

use jobq_proto::json;
use jobq_proto::pb;
use jobq_proto::pb::worker_service_client::WorkerServiceClient;
use prost::Message;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::connect::{Connection, Idempotence, unary};
use crate::{Error, Job};

/// A client of `jobq.v1.WorkerService`. Cheap to clone; clones share one
/// connection.
#[derive(Debug, Clone)]
pub struct WorkerClient {
    connection: Connection,
}

/// A request for work: see [`WorkerClient::claim_jobs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimJobs {
    worker_id: String,
    max_jobs: u32,
    lease: Option<Duration>,
    wait: Duration,
}

impl ClaimJobs {
    /// Claims up to `max_jobs` (1 to 100) for the worker named `worker_id`,
    /// without waiting, under the server's default lease.
    pub fn new(worker_id: impl Into<String>, max_jobs: u32) -> Self {
        Self {
            worker_id: worker_id.into(),
            max_jobs,
            lease: None,
            wait: Duration::ZERO,
        }
    }

    /// How long each lease lasts unless renewed (1 s to 1 h).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// How long to wait for a job when none is queued (up to 30 s); the call
    /// returns as soon as one is.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }
}

impl From<&ClaimJobs> for pb::ClaimJobsRequest {
    fn from(request: &ClaimJobs) -> Self {
        Self {
            worker_id: request.worker_id.clone(),
            max_jobs: i32::try_from(request.max_jobs).unwrap_or(i32::MAX),
            lease_duration: request.lease.map(duration),
            wait: (!request.wait.is_zero()).then(|| duration(request.wait)),
        }
    }
}

fn duration(d: Duration) -> prost_types::Duration {
    // Durations here are far below the ~292 years where this could fail.
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// The right to report on one claimed job: quote it in every call about the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job.
    pub job_id: Uuid,
    /// The lease's id.
    pub lease_id: Uuid,
    /// When it runs out unless renewed.
    pub expires_at: SystemTime,
}

/// One job handed to this worker.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedJob {
    /// The job, now PROCESSING.
    pub job: Job,
    /// The lease under which to report on it.
    pub lease: Lease,
}

impl TryFrom<pb::ClaimedJob> for ClaimedJob {
    type Error = Error;

    fn try_from(claimed: pb::ClaimedJob) -> Result<Self, Error> {
        let pb::ClaimedJob {
            job,
            lease_id,
            lease_expires_at,
        } = claimed;
        let job =
            Job::try_from(job.ok_or_else(|| Error::Decode("ClaimedJob without a job".into()))?)?;
        let lease_id = Uuid::try_parse(&lease_id)
            .map_err(|_| Error::Decode(format!("lease_id `{lease_id}` is not a UUID")))?;
        Ok(Self {
            lease: Lease {
                job_id: job.id,
                lease_id,
                expires_at: timestamp(lease_expires_at)?,
            },
            job,
        })
    }
}

fn timestamp(value: Option<prost_types::Timestamp>) -> Result<SystemTime, Error> {
    let value = value.ok_or_else(|| Error::Decode("lease_expires_at is missing".into()))?;
    SystemTime::try_from(value).map_err(|e| Error::Decode(format!("lease_expires_at: {e}")))
}

/// A renewed lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// When the lease now runs out.
    pub expires_at: SystemTime,
    /// The job's owner asked to cancel it: stop, and report (the report settles
    /// it as CANCELLED).
    pub cancel_requested: bool,
}

/// A successful extraction's report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    result: Option<serde_json::Map<String, serde_json::Value>>,
    token_usage: Option<crate::TokenUsage>,
    confidence: Option<f32>,
    uncertain_items: Vec<serde_json::Value>,
    superfluous_text: Vec<serde_json::Value>,
}

impl Completion {
    /// A completion with the structured menu `result` (a JSON object).
    pub fn new(result: serde_json::Map<String, serde_json::Value>) -> Self {
        Self {
            result: Some(result),
            ..Self::default()
        }
    }

    /// What the extraction spent.
    pub fn token_usage(mut self, usage: crate::TokenUsage) -> Self {
        self.token_usage = Some(usage);
        self
    }

    /// The model's confidence, 0 to 1.
    pub fn confidence(mut self, confidence: f32) -> Self {
        self.confidence = Some(confidence);
        self
    }

    /// Items the model was unsure of.
    pub fn uncertain_items(mut self, items: Vec<serde_json::Value>) -> Self {
        self.uncertain_items = items;
        self
    }

    /// Text on the photo that is not menu.
    pub fn superfluous_text(mut self, text: Vec<serde_json::Value>) -> Self {
        self.superfluous_text = text;
        self
    }

    pub(crate) fn into_request(self, lease: &Lease) -> pb::CompleteJobRequest {
        let Self {
            result,
            token_usage,
            confidence,
            uncertain_items,
            superfluous_text,
        } = self;
        let list =
            |items: Vec<serde_json::Value>| (!items.is_empty()).then(|| json::json_to_list(items));
        pb::CompleteJobRequest {
            job_id: lease.job_id.to_string(),
            lease_id: lease.lease_id.to_string(),
            result: result.map(json::json_to_struct),
            token_usage: token_usage.map(|usage| pb::TokenUsage {
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                model: usage.model,
                cost_usd: usage.cost_usd,
                extras: (!usage.extras.is_empty()).then(|| json::json_to_struct(usage.extras)),
            }),
            confidence,
            uncertain_items: list(uncertain_items),
            superfluous_text: list(superfluous_text),
        }
    }
}

impl WorkerClient {
    pub(crate) fn from_connection(connection: Connection) -> Self {
        Self { connection }
    }

    /// A worker client over an existing channel, with the default call policy
    /// and no key (see [`crate::JobQueueClient::builder`] for the options).
    pub fn from_channel(channel: Channel) -> Self {
        Self::from_connection(Connection::plain(channel))
    }

    /// The generated client, for what the typed API does not cover.
    pub fn raw(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.connection.channel())
    }

    /// Claims the oldest queued jobs, each PROCESSING under a fresh lease; with
    /// [`ClaimJobs::wait`], waits for one when none is queued. Never retried by
    /// the client (see [`crate::RetryPolicy`]).
    ///
    /// ```no_run
    /// # async fn example(worker: jobq_client::WorkerClient) -> Result<(), jobq_client::Error> {
    /// use std::time::Duration;
    /// let request = jobq_client::ClaimJobs::new("worker-1", 10)
    ///     .lease(Duration::from_secs(60))
    ///     .wait(Duration::from_secs(20));
    /// for claimed in worker.claim_jobs(&request).await? {
    ///     println!("{} under lease {}", claimed.job.image_url, claimed.lease.lease_id);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming a bad `worker_id`, `max_jobs`,
    /// `lease_duration` or `wait`; [`Error::Unavailable`].
    pub async fn claim_jobs(&self, request: &ClaimJobs) -> Result<Vec<ClaimedJob>, Error> {
        let response = unary!(
            self.connection,
            Idempotence::Unsafe,
            WorkerServiceClient::claim_jobs,
            pb::ClaimJobsRequest::from(request),
            wait = request.wait
        )?;
        response
            .jobs
            .into_iter()
            .map(ClaimedJob::try_from)
            .collect()
    }

    /// Extends `lease` by `extend_by` from now (`None`: the length it was claimed
    /// with), and learns whether the job's owner asked to cancel it.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease expired and the job went to another
    /// worker (stop working on it; do not report); [`Error::InvalidStatus`] when
    /// the job already finished under this lease.
    pub async fn heartbeat(
        &self,
        lease: &Lease,
        extend_by: Option<Duration>,
    ) -> Result<Renewed, Error> {
        let message = pb::HeartbeatRequest {
            job_id: lease.job_id.to_string(),
            lease_id: lease.lease_id.to_string(),
            extend_by: extend_by.map(duration),
        };
        let response = unary!(
            self.connection,
            Idempotence::Safe,
            WorkerServiceClient::heartbeat,
            message
        )?;
        Ok(Renewed {
            expires_at: timestamp(response.lease_expires_at)?,
            cancel_requested: response.cancel_requested,
        })
    }

    /// Reports the job done: COMPLETED (or CANCELLED when its owner cancelled it
    /// meanwhile). Returns the job as stored.
    ///
    /// ```no_run
    /// # async fn example(worker: jobq_client::WorkerClient, claimed: jobq_client::ClaimedJob) -> Result<(), jobq_client::Error> {
    /// let mut menu = serde_json::Map::new();
    /// menu.insert("items".into(), serde_json::json!([{"name": "Soup", "price": 4.5}]));
    /// let job = worker
    ///     .complete_job(&claimed.lease, jobq_client::Completion::new(menu).confidence(0.93))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::LeaseLost`]; [`Error::InvalidStatus`] when the job already
    /// finished under this lease (also what a retried report gets when its first
    /// attempt landed); [`Error::InvalidArgument`] for an oversize or malformed
    /// document.
    pub async fn complete_job(&self, lease: &Lease, completion: Completion) -> Result<Job, Error> {
        self.complete_request(completion.into_request(lease)).await
    }

    /// [`WorkerClient::complete_job`] of a request already built.
    pub(crate) async fn complete_request(
        &self,
        message: pb::CompleteJobRequest,
    ) -> Result<Job, Error> {
        let response = unary!(
            self.connection,
            Idempotence::Safe,
            WorkerServiceClient::complete_job,
            message
        )?;
        finished_job(response.job)
    }

    /// Reports up to 100 jobs done in one call (and one database statement on
    /// the server), each exactly as [`WorkerClient::complete_job`] would report
    /// it. Returns one outcome per completion, in order: the job as stored, or
    /// why that completion was refused ([`Error::LeaseLost`],
    /// [`Error::InvalidStatus`], [`Error::JobNotFound`]); the others are not
    /// affected by it.
    ///
    /// ```no_run
    /// # async fn example(worker: jobq_client::WorkerClient) -> Result<(), jobq_client::Error> {
    /// let claimed = worker.claim_jobs(&jobq_client::ClaimJobs::new("worker-1", 50)).await?;
    /// let reports = claimed
    ///     .iter()
    ///     .map(|job| (&job.lease, jobq_client::Completion::new(serde_json::Map::new())));
    /// for outcome in worker.complete_jobs(reports).await? {
    ///     if let Err(refused) = outcome {
    ///         eprintln!("not completed: {refused}");
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// For the whole call, with nothing written: [`Error::InvalidArgument`]
    /// naming the bad field of any completion (`completions[2].confidence`), or
    /// `completions` when there are none or more than 100, or a job's second
    /// completion; [`Error::Unavailable`] when the server applied none of them
    /// (one it could not apply while applying others is that outcome's
    /// [`Error::Unavailable`]). Calling again is safe: what had landed is then
    /// refused with [`Error::InvalidStatus`].
    pub async fn complete_jobs<'a>(
        &self,
        completions: impl IntoIterator<Item = (&'a Lease, Completion)>,
    ) -> Result<Vec<Result<Job, Error>>, Error> {
        self.complete_requests(
            completions
                .into_iter()
                .map(|(lease, completion)| completion.into_request(lease))
                .collect(),
        )
        .await
    }

    /// [`WorkerClient::complete_jobs`] of requests already built.
    pub(crate) async fn complete_requests(
        &self,
        completions: Vec<pb::CompleteJobRequest>,
    ) -> Result<Vec<Result<Job, Error>>, Error> {
        let message = pb::CompleteJobsRequest { completions };
        let sent = message.completions.len();
        let response = unary!(
            self.connection,
            Idempotence::Safe,
            WorkerServiceClient::complete_jobs,
            message
        )?;
        if response.results.len() != sent {
            return Err(Error::Decode(format!(
                "CompleteJobs answered {} results for {sent} completions",
                response.results.len()
            )));
        }
        Ok(response.results.into_iter().map(completed).collect())
    }

    /// Reports the job failed with `error_message` (1 to 8192 bytes): FAILED (or
    /// CANCELLED when its owner cancelled it meanwhile).
    ///
    /// # Errors
    /// As [`WorkerClient::complete_job`].
    pub async fn fail_job(
        &self,
        lease: &Lease,
        error_message: impl Into<String>,
    ) -> Result<Job, Error> {
        let message = pb::FailJobRequest {
            job_id: lease.job_id.to_string(),
            lease_id: lease.lease_id.to_string(),
            error_message: error_message.into(),
        };
        let response = unary!(
            self.connection,
            Idempotence::Safe,
            WorkerServiceClient::fail_job,
            message
        )?;
        finished_job(response.job)
    }
}

fn finished_job(job: Option<pb::Job>) -> Result<Job, Error> {
    job.ok_or_else(|| Error::Decode("report answered without a job".into()))?
        .try_into()
}

/// One outcome of CompleteJobs: the job, or the error the call would have
/// failed with had it completed that job alone.
fn completed(result: pb::CompleteJobsResult) -> Result<Job, Error> {
    match result.outcome {
        Some(pb::complete_jobs_result::Outcome::Job(job)) => job.try_into(),
        Some(pb::complete_jobs_result::Outcome::Error(status)) => {
            let details = tonic::codegen::Bytes::from(status.encode_to_vec());
            Err(tonic::Status::with_details(status.code.into(), status.message, details).into())
        }
        None => Err(Error::Decode(
            "CompleteJobs result without an outcome".into(),
        )),
    }
}
