//! Typed requests and results.

use std::time::{Duration, SystemTime};

use jobq_proto::json;
use jobq_proto::pb;
use uuid::Uuid;

use crate::Error;

/// A job, as the server last reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The job's id.
    pub id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// Where the photo is.
    pub image_url: String,
    /// SHA-256 of the photo, lower-case hex (empty only for legacy jobs).
    pub image_sha256: String,
    /// Where the job is in its life cycle.
    pub status: pb::JobStatus,
    /// Output schema.
    pub schema_version: String,
    /// Prompt revision.
    pub prompt_version: String,
    /// The extracted menu, once completed.
    pub result: Option<serde_json::Value>,
    /// Why the job failed.
    pub error_message: Option<String>,
    /// Retries before this job.
    pub retry_count: u32,
    /// The failed job this one retries.
    pub retry_of_job_id: Option<Uuid>,
    /// Claims by workers so far.
    pub attempt: u32,
    /// Tokens and cost spent.
    pub token_usage: Option<TokenUsage>,
    /// The model's confidence, 0 to 1.
    pub confidence: Option<f32>,
    /// Items the model was unsure of.
    pub uncertain_items: Vec<serde_json::Value>,
    /// Text on the photo that is not menu.
    pub superfluous_text: Vec<serde_json::Value>,
    /// From claim to completion.
    pub processing_time: Option<Duration>,
    /// Submission time.
    pub created_at: SystemTime,
    /// Last change.
    pub updated_at: SystemTime,
    /// Last claim by a worker.
    pub started_at: Option<SystemTime>,
    /// When it finished.
    pub completed_at: Option<SystemTime>,
    /// Change counter: higher is later.
    pub version: i64,
    /// Whether its owner asked to cancel it while it was processing.
    pub cancel_requested: bool,
}

/// Tokens and money one extraction spent.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Completion tokens.
    pub output_tokens: i64,
    /// The model.
    pub model: String,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Further figures, as the worker reported them.
    pub extras: serde_json::Map<String, serde_json::Value>,
}

fn uuid(field: &str, value: &str) -> Result<Uuid, Error> {
    Uuid::try_parse(value).map_err(|_| Error::Decode(format!("{field} `{value}` is not a UUID")))
}

fn optional_uuid(field: &str, value: &str) -> Result<Option<Uuid>, Error> {
    (!value.is_empty()).then(|| uuid(field, value)).transpose()
}

fn time(field: &str, value: Option<prost_types::Timestamp>) -> Result<Option<SystemTime>, Error> {
    value
        .map(|t| SystemTime::try_from(t).map_err(|e| Error::Decode(format!("{field}: {e}"))))
        .transpose()
}

fn required_time(field: &str, value: Option<prost_types::Timestamp>) -> Result<SystemTime, Error> {
    time(field, value)?.ok_or_else(|| Error::Decode(format!("{field} is missing")))
}

fn list(value: Option<prost_types::ListValue>) -> Vec<serde_json::Value> {
    match value.map(json::list_to_json) {
        Some(serde_json::Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

impl TryFrom<pb::Job> for Job {
    type Error = Error;

    fn try_from(job: pb::Job) -> Result<Self, Error> {
        let pb::Job {
            id,
            user_id,
            image_url,
            image_sha256,
            status,
            schema_version,
            prompt_version,
            result,
            error_message,
            retry_count,
            retry_of_job_id,
            attempt,
            token_usage,
            confidence,
            uncertain_items,
            superfluous_text,
            processing_time,
            created_at,
            updated_at,
            started_at,
            completed_at,
            version,
            cancel_requested,
        } = job;
        Ok(Self {
            id: uuid("id", &id)?,
            user_id: uuid("user_id", &user_id)?,
            image_url,
            image_sha256,
            status: pb::JobStatus::try_from(status).unwrap_or(pb::JobStatus::Unspecified),
            schema_version,
            prompt_version,
            result: result.map(json::struct_to_json),
            error_message: (!error_message.is_empty()).then_some(error_message),
            retry_count: u32::try_from(retry_count).unwrap_or_default(),
            retry_of_job_id: optional_uuid("retry_of_job_id", &retry_of_job_id)?,
            attempt: u32::try_from(attempt).unwrap_or_default(),
            token_usage: token_usage.map(|usage| {
                let pb::TokenUsage {
                    input_tokens,
                    output_tokens,
                    model,
                    cost_usd,
                    extras,
                } = usage;
                TokenUsage {
                    input_tokens,
                    output_tokens,
                    model,
                    cost_usd,
                    extras: match extras.map(json::struct_to_json) {
                        Some(serde_json::Value::Object(map)) => map,
                        _ => serde_json::Map::new(),
                    },
                }
            }),
            confidence,
            uncertain_items: list(uncertain_items),
            superfluous_text: list(superfluous_text),
            processing_time: processing_time
                .map(|d| {
                    Duration::try_from(d)
                        .map_err(|e| Error::Decode(format!("processing_time: {e}")))
                })
                .transpose()?,
            created_at: required_time("created_at", created_at)?,
            updated_at: required_time("updated_at", updated_at)?,
            started_at: time("started_at", started_at)?,
            completed_at: time("completed_at", completed_at)?,
            version,
            cancel_requested,
        })
    }
}

/// A job submission. `schema_version` and `prompt_version` default on the server
/// (`stage1`, `v1.0`).
///
/// Each `SubmitJob` is one submission: [`SubmitJob::new`] gives it a fresh
/// `request_id` (a UUID), sent with every attempt to submit it, so that the
/// server makes at most one job for it however often it is sent (the client
/// retries a submission after a lost connection on that basis). Submitting the
/// same value (or a clone) twice gets the first job back; build a new one, or
/// give it a new [`SubmitJob::request_id`], to ask for another job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitJob {
    request_id: Uuid,
    user_id: Uuid,
    image_url: String,
    image_sha256: String,
    schema_version: Option<String>,
    prompt_version: Option<String>,
    force: bool,
}

impl SubmitJob {
    /// A submission of the photo at `image_url` whose SHA-256 is `image_sha256`
    /// (see [`crate::sha256_hex`]).
    pub fn new(
        user_id: Uuid,
        image_url: impl Into<String>,
        image_sha256: impl Into<String>,
    ) -> Self {
        Self {
            request_id: Uuid::new_v4(),
            user_id,
            image_url: image_url.into(),
            image_sha256: image_sha256.into(),
            schema_version: None,
            prompt_version: None,
            force: false,
        }
    }

    /// The output schema to extract into.
    pub fn schema_version(mut self, version: impl Into<String>) -> Self {
        self.schema_version = Some(version.into());
        self
    }

    /// The prompt revision to use.
    pub fn prompt_version(mut self, version: impl Into<String>) -> Self {
        self.prompt_version = Some(version.into());
        self
    }

    /// Create a new job even when a matching one exists.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Names this submission with `request_id` instead of the one made by
    /// [`SubmitJob::new`]: for a caller that keeps its own key (say, its upload's
    /// id) so that a submission repeated after a crash finds the first job.
    pub fn request_id(mut self, request_id: Uuid) -> Self {
        self.request_id = request_id;
        self
    }

    /// This submission's idempotency key.
    pub fn id(&self) -> Uuid {
        self.request_id
    }
}

impl From<SubmitJob> for pb::SubmitJobRequest {
    fn from(request: SubmitJob) -> Self {
        let SubmitJob {
            request_id,
            user_id,
            image_url,
            image_sha256,
            schema_version,
            prompt_version,
            force,
        } = request;
        Self {
            user_id: user_id.to_string(),
            image_url,
            image_sha256,
            schema_version: schema_version.unwrap_or_default(),
            prompt_version: prompt_version.unwrap_or_default(),
            force,
            request_id: request_id.to_string(),
        }
    }
}

/// What a submission produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The new job, or the existing one that matched.
    pub job: Job,
    /// True when `job` already existed and no new job was made.
    pub deduplicated: bool,
}

impl TryFrom<pb::SubmitJobResponse> for Submitted {
    type Error = Error;

    fn try_from(response: pb::SubmitJobResponse) -> Result<Self, Error> {
        let pb::SubmitJobResponse { job, deduplicated } = response;
        Ok(Self {
            job: job
                .ok_or_else(|| Error::Decode("SubmitJobResponse without a job".into()))?
                .try_into()?,
            deduplicated,
        })
    }
}

/// A request for a page of a user's jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListJobs {
    user_id: Uuid,
    page_size: Option<u32>,
    page_token: Option<String>,
    status: Option<pb::JobStatus>,
}

impl ListJobs {
    /// The first page (20 jobs) of `user_id`'s jobs in every status.
    pub fn new(user_id: Uuid) -> Self {
        Self {
            user_id,
            page_size: None,
            page_token: None,
            status: None,
        }
    }

    /// Jobs per page, 1 to 100.
    pub fn page_size(mut self, size: u32) -> Self {
        self.page_size = Some(size);
        self
    }

    /// Continue the listing that returned this token.
    pub fn page_token(mut self, token: impl Into<String>) -> Self {
        self.page_token = Some(token.into());
        self
    }

    /// Only jobs in this status.
    pub fn status(mut self, status: pb::JobStatus) -> Self {
        self.status = Some(status);
        self
    }
}

impl From<ListJobs> for pb::ListJobsRequest {
    fn from(request: ListJobs) -> Self {
        let ListJobs {
            user_id,
            page_size,
            page_token,
            status,
        } = request;
        Self {
            user_id: user_id.to_string(),
            // A size beyond i32 is out of range either way; the server says so.
            page_size: page_size.map_or(0, |size| i32::try_from(size).unwrap_or(i32::MAX)),
            page_token: page_token.unwrap_or_default(),
            status: status.unwrap_or(pb::JobStatus::Unspecified).into(),
        }
    }
}

/// A page of jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<Job>,
    /// The token for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

impl TryFrom<pb::ListJobsResponse> for JobPage {
    type Error = Error;

    fn try_from(response: pb::ListJobsResponse) -> Result<Self, Error> {
        let pb::ListJobsResponse {
            jobs,
            next_page_token,
        } = response;
        Ok(Self {
            jobs: jobs
                .into_iter()
                .map(Job::try_from)
                .collect::<Result<_, _>>()?,
            next_page_token: (!next_page_token.is_empty()).then_some(next_page_token),
        })
    }
}

/// A user's plan and usage, as CheckQuota reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// The plan applied.
    pub plan: String,
    /// Whether a new (not deduplicated) submission would be accepted now.
    pub allowed: bool,
    /// When not allowed, the reason SubmitJob would give (`QUOTA_EXCEEDED` or
    /// `RATE_LIMIT_EXCEEDED`).
    pub reason: Option<String>,
    /// This UTC calendar month.
    pub monthly: QuotaWindow,
    /// The rolling last 60 minutes.
    pub hourly: QuotaWindow,
}

/// Usage against one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaWindow {
    /// New jobs counted.
    pub used: i64,
    /// The limit; `None` means unlimited.
    pub limit: Option<i64>,
    /// When the window next frees a slot (see the proto's `QuotaWindow`).
    pub resets_at: Option<SystemTime>,
}

impl TryFrom<Option<pb::QuotaWindow>> for QuotaWindow {
    type Error = Error;

    fn try_from(window: Option<pb::QuotaWindow>) -> Result<Self, Error> {
        let pb::QuotaWindow {
            used,
            limit,
            resets_at,
        } = window.ok_or_else(|| Error::Decode("CheckQuotaResponse without a window".into()))?;
        Ok(Self {
            used,
            limit: (limit >= 0).then_some(limit),
            resets_at: time("resets_at", resets_at)?,
        })
    }
}

impl TryFrom<pb::CheckQuotaResponse> for Quota {
    type Error = Error;

    fn try_from(response: pb::CheckQuotaResponse) -> Result<Self, Error> {
        let pb::CheckQuotaResponse {
            plan,
            allowed,
            reason,
            monthly,
            hourly,
        } = response;
        Ok(Self {
            plan,
            allowed,
            reason: (!reason.is_empty()).then_some(reason),
            monthly: monthly.try_into()?,
            hourly: hourly.try_into()?,
        })
    }
}
