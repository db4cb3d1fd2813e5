//! The job domain: ids, statuses, and the values that cross between the gRPC layer
//! and storage.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A user's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct UserId(pub Uuid);

/// A job's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh, time-ordered id (UUIDv7), so new rows land at the end of the index.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

/// Where a job is in its life cycle, stored as the seed wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for a worker.
    Queued,
    /// Held by a worker under a lease.
    Processing,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled by its owner.
    Cancelled,
}

impl JobStatus {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Reads a `status` column value; `None` for a value jobq does not know (a
    /// legacy row may hold one).
    pub fn parse(stored: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Processing,
            Self::Completed,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == stored)
    }
}

/// A row of `menu_extraction_jobs` as jobq reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// The owner; only legacy rows can lack one.
    pub user_id: Option<UserId>,
    /// Where the photo is.
    pub image_url: String,
    /// SHA-256 of the photo, lower-case hex; only legacy rows can lack one.
    #[sqlx(rename = "image_hash")]
    pub image_sha256: Option<String>,
    /// The stored status (kept as text: a legacy row may hold a value jobq does
    /// not know, see [`JobStatus::parse`]).
    pub status: String,
    /// Output schema.
    pub schema_version: String,
    /// Prompt revision.
    pub prompt_version: String,
    /// The extraction result.
    pub result: Option<serde_json::Value>,
    /// Why the job failed.
    pub error_message: Option<String>,
    /// Milliseconds from claim to completion.
    pub processing_time: Option<i32>,
    /// Retries before this job.
    pub retry_count: i32,
    /// The failed job this one retries.
    pub retry_of_job_id: Option<JobId>,
    /// Claims so far.
    pub attempt: i32,
    /// Tokens and cost, as the worker reported them.
    pub token_usage: Option<serde_json::Value>,
    /// The model's confidence.
    pub confidence: Option<f32>,
    /// Items the model was unsure of.
    pub uncertain_items: Option<serde_json::Value>,
    /// Text that is not part of the menu.
    pub superfluous_text: Option<serde_json::Value>,
    /// Submission time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Last claim.
    pub started_at: Option<DateTime<Utc>>,
    /// Finish time.
    pub completed_at: Option<DateTime<Utc>>,
    /// Change counter (one sequence for all jobs).
    pub version: i64,
    /// Whether the owner asked to cancel it while it was processing.
    pub cancel_requested: bool,
}

/// A validated submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The submitting user.
    pub user_id: UserId,
    /// Where the photo is.
    pub image_url: String,
    /// SHA-256 of the photo, lower-case hex.
    pub image_sha256: String,
    /// Output schema.
    pub schema_version: String,
    /// Prompt revision.
    pub prompt_version: String,
    /// Skip deduplication.
    pub force: bool,
    /// The caller's idempotency key for this submission.
    pub request_id: Option<uuid::Uuid>,
}

/// A position in a user's job list, newest first: the last job of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    /// `created_at` of the last job listed.
    pub created_at: DateTime<Utc>,
    /// `id` of the last job listed.
    pub id: JobId,
}

/// A validated ListJobs request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Whose jobs.
    pub user_id: UserId,
    /// Only this status, or every status.
    pub status: Option<JobStatus>,
    /// Continue after this job, or start from the newest.
    pub after: Option<ListCursor>,
    /// Jobs per page (1-100).
    pub page_size: u32,
}

/// A lease's id: proof that a worker holds the job it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct LeaseId(pub Uuid);

/// A validated ClaimJobs request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Who claims.
    pub worker_id: String,
    /// The most jobs to claim (1-100).
    pub max_jobs: u32,
    /// Lease length for each claimed job.
    pub lease: std::time::Duration,
    /// How long to wait for work when none is queued (0-30 s).
    pub wait: std::time::Duration,
}

/// A job handed to a worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    /// The job, now processing.
    #[sqlx(flatten)]
    pub job: Job,
    /// The lease the worker must quote.
    pub lease_id: LeaseId,
    /// When the lease runs out.
    pub lease_expires_at: DateTime<Utc>,
}

impl ClaimedJob {
    /// The job and the lease it was claimed under.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef {
            job_id: self.job.id,
            lease_id: self.lease_id,
        }
    }
}

/// A validated Heartbeat request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRef {
    /// The job.
    pub job_id: JobId,
    /// The lease the worker holds.
    pub lease_id: LeaseId,
}

/// What a worker reports for a finished extraction.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The job and lease.
    pub lease: LeaseRef,
    /// The structured menu.
    pub result: Option<serde_json::Value>,
    /// Tokens and cost.
    pub token_usage: Option<serde_json::Value>,
    /// The model's confidence, 0 to 1.
    pub confidence: Option<f32>,
    /// Items the model was unsure of.
    pub uncertain_items: Option<serde_json::Value>,
    /// Text that is not part of the menu.
    pub superfluous_text: Option<serde_json::Value>,
}

/// What a worker reports for a failed extraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The job and lease.
    pub lease: LeaseRef,
    /// What went wrong.
    pub error_message: String,
}
