//! Proto messages to domain values and back.
//!
//! Requests are destructured exhaustively, so a field added to the proto cannot be
//! ignored by accident; every bad field becomes one `BadRequest` violation, and all
//! of them are reported together.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use chrono::{DateTime, Utc};
use jobq_proto::json;
use jobq_proto::pb;
use uuid::Uuid;

use crate::error::{Error, FieldViolation, reason};
use crate::job::{
    ClaimRequest, Completion, Failure, Job, JobId, JobStatus, LeaseId, LeaseRef, ListQuery, NewJob,
    UserId,
};
use crate::page_token::PageToken;
use crate::plans::Plans;
use crate::quota::{QuotaStatus, Refusal, Window};
use crate::resume::Position;
use crate::storage::changes::WatchFilter;

/// Longest accepted `image_url`, in bytes.
pub const MAX_IMAGE_URL_LEN: usize = 2048;
/// Longest accepted `schema_version` (the column is VARCHAR(20)).
pub const MAX_SCHEMA_VERSION_LEN: usize = 20;
/// Longest accepted `prompt_version` (the column is VARCHAR(50)).
pub const MAX_PROMPT_VERSION_LEN: usize = 50;
/// `schema_version` when the request leaves it empty.
pub const DEFAULT_SCHEMA_VERSION: &str = "stage1";
/// `prompt_version` when the request leaves it empty.
pub const DEFAULT_PROMPT_VERSION: &str = "v1.0";
/// ListJobs page size when the request leaves it 0.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest ListJobs page size.
pub const MAX_PAGE_SIZE: u32 = 100;

/// Collects the violations of one request.
#[derive(Debug, Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Keeps `result`'s value, or records its error against `field`.
    fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        result
            .map_err(|description| {
                self.0.push(FieldViolation {
                    field: field.to_owned(),
                    description,
                })
            })
            .ok()
    }

    /// `value` when no violation was recorded.
    fn finish<T>(self, value: impl FnOnce() -> Option<T>) -> Result<T, Error> {
        if !self.0.is_empty() {
            return Err(Error::InvalidArgument(self.0));
        }
        value().ok_or_else(|| Error::Internal("a checked field had no value".to_owned()))
    }
}

fn uuid(value: &str) -> Result<Uuid, String> {
    if value.is_empty() {
        return Err("is required (a UUID)".to_owned());
    }
    Uuid::try_parse(value).map_err(|_| format!("`{}` is not a UUID", truncated(value)))
}

fn sha256_hex(value: &str) -> Result<String, String> {
    if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "must be 64 hex characters (a SHA-256 digest), got {} characters",
            value.chars().count()
        ));
    }
    Ok(value.to_ascii_lowercase())
}

fn image_url(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("is required".to_owned());
    }
    if value.len() > MAX_IMAGE_URL_LEN {
        return Err(format!(
            "must be at most {MAX_IMAGE_URL_LEN} bytes, got {}",
            value.len()
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".to_owned());
    }
    let scheme_ok = value.split_once("://").is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if !scheme_ok {
        return Err("must be an absolute URL (scheme://...)".to_owned());
    }
    Ok(value.to_owned())
}

/// A version label: printable ASCII without spaces, at most `max` characters;
/// empty means `default`.
fn version_label(value: &str, max: usize, default: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(default.to_owned());
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".to_owned());
    }
    if value.len() > max {
        return Err(format!(
            "must be at most {max} characters, got {}",
            value.len()
        ));
    }
    Ok(value.to_owned())
}

/// Echoes at most 40 characters of a bad value back in an error.
fn truncated(value: &str) -> String {
    match value.char_indices().nth(40) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_owned(),
    }
}

impl TryFrom<pb::SubmitJobRequest> for NewJob {
    type Error = Error;

    fn try_from(request: pb::SubmitJobRequest) -> Result<Self, Error> {
        let pb::SubmitJobRequest {
            user_id,
            image_url: url,
            image_sha256,
            schema_version,
            prompt_version,
            force,
            request_id,
        } = request;
        let mut v = Violations::default();
        let user_id = v.check("user_id", uuid(&user_id));
        let image_url = v.check("image_url", image_url(&url));
        let image_sha256 = v.check("image_sha256", sha256_hex(&image_sha256));
        let schema_version = v.check(
            "schema_version",
            version_label(
                &schema_version,
                MAX_SCHEMA_VERSION_LEN,
                DEFAULT_SCHEMA_VERSION,
            ),
        );
        let prompt_version = v.check(
            "prompt_version",
            version_label(
                &prompt_version,
                MAX_PROMPT_VERSION_LEN,
                DEFAULT_PROMPT_VERSION,
            ),
        );
        let request_id = v.check(
            "request_id",
            if request_id.is_empty() {
                Ok(None)
            } else {
                uuid(&request_id).map(Some)
            },
        );
        v.finish(|| {
            Some(NewJob {
                user_id: UserId(user_id?),
                image_url: image_url?,
                image_sha256: image_sha256?,
                schema_version: schema_version?,
                prompt_version: prompt_version?,
                force,
                request_id: request_id?,
            })
        })
    }
}

/// A validated GetJob request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRef {
    /// The job.
    pub job_id: JobId,
    /// Its owner, as the caller claims.
    pub user_id: UserId,
}

impl JobRef {
    fn parse(job_id: &str, user_id: &str) -> Result<Self, Error> {
        let mut v = Violations::default();
        let job_id = v.check("job_id", uuid(job_id));
        let user_id = v.check("user_id", uuid(user_id));
        v.finish(|| {
            Some(JobRef {
                job_id: JobId(job_id?),
                user_id: UserId(user_id?),
            })
        })
    }
}

impl TryFrom<pb::GetJobRequest> for JobRef {
    type Error = Error;

    fn try_from(request: pb::GetJobRequest) -> Result<Self, Error> {
        let pb::GetJobRequest { job_id, user_id } = request;
        Self::parse(&job_id, &user_id)
    }
}

impl TryFrom<pb::RetryJobRequest> for JobRef {
    type Error = Error;

    fn try_from(request: pb::RetryJobRequest) -> Result<Self, Error> {
        let pb::RetryJobRequest { job_id, user_id } = request;
        Self::parse(&job_id, &user_id)
    }
}

/// A required user id field.
pub fn user_id(field: &str, value: &str) -> Result<UserId, Error> {
    uuid(value)
        .map(UserId)
        .map_err(|description| Error::invalid(field, description))
}

impl TryFrom<pb::CancelJobRequest> for JobRef {
    type Error = Error;

    fn try_from(request: pb::CancelJobRequest) -> Result<Self, Error> {
        let pb::CancelJobRequest { job_id, user_id } = request;
        Self::parse(&job_id, &user_id)
    }
}

impl TryFrom<pb::CheckQuotaRequest> for UserId {
    type Error = Error;

    fn try_from(request: pb::CheckQuotaRequest) -> Result<Self, Error> {
        let pb::CheckQuotaRequest { user_id: id } = request;
        user_id("user_id", &id)
    }
}

impl TryFrom<pb::GetUserPlanRequest> for UserId {
    type Error = Error;

    fn try_from(request: pb::GetUserPlanRequest) -> Result<Self, Error> {
        let pb::GetUserPlanRequest { user_id: id } = request;
        user_id("user_id", &id)
    }
}

/// A validated SetUserPlan request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanAssignment {
    /// The user.
    pub user_id: UserId,
    /// A plan the configuration has.
    pub plan: String,
}

impl PlanAssignment {
    /// Validates `request` against the configured `plans`.
    pub fn parse(request: pb::SetUserPlanRequest, plans: &Plans) -> Result<Self, Error> {
        let pb::SetUserPlanRequest { user_id, plan } = request;
        let mut v = Violations::default();
        let user_id = v.check("user_id", uuid(&user_id));
        let plan = v.check(
            "plan",
            match plans.get(&plan) {
                Some(known) => Ok(known.name.clone()),
                None => Err(format!(
                    "`{}` is not a plan: known plans are {}",
                    truncated(&plan),
                    plans.names().collect::<Vec<_>>().join(", ")
                )),
            },
        );
        v.finish(|| {
            Some(PlanAssignment {
                user_id: UserId(user_id?),
                plan: plan?,
            })
        })
    }
}

/// Bounds on what workers send and ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Lease length when ClaimJobs leaves it unset.
    pub default_lease: std::time::Duration,
    /// Largest JSON document (result, uncertain items, superfluous text, token
    /// usage) a worker may store, in bytes of its JSON text.
    pub max_document_bytes: usize,
}

/// Shortest lease a worker may ask for.
pub const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest lease (or extension) a worker may ask for.
pub const MAX_LEASE: std::time::Duration = std::time::Duration::from_secs(3600);
/// Longest ClaimJobs wait.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most jobs one ClaimJobs call may take.
pub const MAX_CLAIM: i32 = 100;
/// Most completions one CompleteJobs call may carry (as many as one ClaimJobs
/// call may hand out).
pub const MAX_COMPLETIONS: usize = 100;
/// Longest worker_id, in bytes.
pub const MAX_WORKER_ID_LEN: usize = 200;
/// Longest error_message, in bytes.
pub const MAX_ERROR_MESSAGE_LEN: usize = 8192;
/// Longest token_usage.model, in bytes.
pub const MAX_MODEL_LEN: usize = 200;

fn duration(value: prost_types::Duration) -> Result<std::time::Duration, String> {
    // google.protobuf.Duration keeps nanos within a second, of the sign of seconds.
    if !(-999_999_999..=999_999_999).contains(&value.nanos) {
        return Err(format!(
            "nanos must be within -999999999..=999999999, got {}",
            value.nanos
        ));
    }
    std::time::Duration::try_from(value).map_err(|_| "must be a non-negative duration".to_owned())
}

fn bounded(
    value: Option<prost_types::Duration>,
    default: Option<std::time::Duration>,
    min: std::time::Duration,
    max: std::time::Duration,
) -> Result<Option<std::time::Duration>, String> {
    let Some(value) = value.map(duration).transpose()? else {
        return Ok(default);
    };
    if value < min || value > max {
        return Err(format!(
            "must be between {min:?} and {max:?}, got {value:?}"
        ));
    }
    Ok(Some(value))
}

fn lease_ref(v: &mut Violations, job_id: &str, lease_id: &str) -> Option<LeaseRef> {
    let job_id = v.check("job_id", uuid(job_id));
    let lease_id = v.check("lease_id", uuid(lease_id));
    Some(LeaseRef {
        job_id: JobId(job_id?),
        lease_id: LeaseId(lease_id?),
    })
}

/// A JSON document within the size limit.
fn document(value: serde_json::Value, limit: usize) -> Result<serde_json::Value, String> {
    let size = serde_json::to_vec(&value)
        .map(|text| text.len())
        .unwrap_or(usize::MAX);
    if size > limit {
        return Err(format!("is {size} bytes of JSON; the limit is {limit}"));
    }
    Ok(value)
}

/// The stored form of a reported token usage: the known figures plus extras.
fn token_usage_json(usage: pb::TokenUsage, limit: usize) -> Result<serde_json::Value, String> {
    let pb::TokenUsage {
        input_tokens,
        output_tokens,
        model,
        cost_usd,
        extras,
    } = usage;
    if input_tokens < 0 || output_tokens < 0 {
        return Err("token counts must not be negative".to_owned());
    }
    if !cost_usd.is_finite() || cost_usd < 0.0 {
        return Err("cost_usd must be a finite, non-negative number".to_owned());
    }
    if model.len() > MAX_MODEL_LEN {
        return Err(format!("model must be at most {MAX_MODEL_LEN} bytes"));
    }
    let mut object = match extras.map(json::struct_to_json) {
        Some(serde_json::Value::Object(object)) => object,
        _ => serde_json::Map::new(),
    };
    object.insert("input_tokens".into(), input_tokens.into());
    object.insert("output_tokens".into(), output_tokens.into());
    object.insert("model".into(), model.into());
    object.insert(
        "cost_usd".into(),
        serde_json::Number::from_f64(cost_usd).map_or(serde_json::Value::Null, Into::into),
    );
    document(serde_json::Value::Object(object), limit)
}

impl ClaimRequest {
    /// Validates a ClaimJobs request.
    pub fn parse(request: pb::ClaimJobsRequest, limits: &WorkerLimits) -> Result<Self, Error> {
        let pb::ClaimJobsRequest {
            worker_id,
            max_jobs,
            lease_duration,
            wait,
        } = request;
        let mut v = Violations::default();
        let worker_id = v.check(
            "worker_id",
            if worker_id.is_empty() || worker_id.len() > MAX_WORKER_ID_LEN {
                Err(format!("must be 1 to {MAX_WORKER_ID_LEN} bytes"))
            } else if worker_id.chars().any(char::is_control) {
                Err("must not contain control characters".to_owned())
            } else {
                Ok(worker_id)
            },
        );
        let max_jobs = v.check(
            "max_jobs",
            match max_jobs {
                1..=MAX_CLAIM => Ok(max_jobs.unsigned_abs()),
                _ => Err(format!("must be between 1 and {MAX_CLAIM}, got {max_jobs}")),
            },
        );
        let lease = v.check(
            "lease_duration",
            bounded(
                lease_duration,
                Some(limits.default_lease),
                MIN_LEASE,
                MAX_LEASE,
            ),
        );
        let wait = v.check(
            "wait",
            bounded(
                wait,
                Some(std::time::Duration::ZERO),
                std::time::Duration::ZERO,
                MAX_WAIT,
            ),
        );
        v.finish(|| {
            Some(ClaimRequest {
                worker_id: worker_id?,
                max_jobs: max_jobs?,
                lease: lease??,
                wait: wait??,
            })
        })
    }
}

/// A validated Heartbeat request: the lease, and the extension asked for.
pub fn heartbeat(
    request: pb::HeartbeatRequest,
) -> Result<(LeaseRef, Option<std::time::Duration>), Error> {
    let pb::HeartbeatRequest {
        job_id,
        lease_id,
        extend_by,
    } = request;
    let mut v = Violations::default();
    let lease = lease_ref(&mut v, &job_id, &lease_id);
    let extend_by = v.check("extend_by", bounded(extend_by, None, MIN_LEASE, MAX_LEASE));
    v.finish(|| Some((lease?, extend_by?)))
}

impl Completion {
    /// Validates a CompleteJob request.
    pub fn parse(request: pb::CompleteJobRequest, limits: &WorkerLimits) -> Result<Self, Error> {
        let pb::CompleteJobRequest {
            job_id,
            lease_id,
            result,
            token_usage,
            confidence,
            uncertain_items,
            superfluous_text,
        } = request;
        let limit = limits.max_document_bytes;
        let mut v = Violations::default();
        let lease = lease_ref(&mut v, &job_id, &lease_id);
        let result = v.check(
            "result",
            result
                .map(|r| document(json::struct_to_json(r), limit))
                .transpose(),
        );
        let token_usage = v.check(
            "token_usage",
            token_usage.map(|u| token_usage_json(u, limit)).transpose(),
        );
        let confidence = v.check(
            "confidence",
            match confidence {
                Some(c) if !(0.0..=1.0).contains(&c) => {
                    Err(format!("must be between 0 and 1, got {c}"))
                }
                other => Ok(other),
            },
        );
        let uncertain_items = v.check(
            "uncertain_items",
            uncertain_items
                .map(|l| document(json::list_to_json(l), limit))
                .transpose(),
        );
        let superfluous_text = v.check(
            "superfluous_text",
            superfluous_text
                .map(|l| document(json::list_to_json(l), limit))
                .transpose(),
        );
        v.finish(|| {
            Some(Completion {
                lease: lease?,
                result: result?,
                token_usage: token_usage?,
                confidence: confidence?,
                uncertain_items: uncertain_items?,
                superfluous_text: superfluous_text?,
            })
        })
    }
}

/// Validates a CompleteJobs request: every completion as CompleteJob would
/// (a bad field is named with its place, `completions[2].confidence`), 1 to
/// [`MAX_COMPLETIONS`] of them, no job named twice. Any violation refuses the
/// whole request.
pub fn completions(
    request: pb::CompleteJobsRequest,
    limits: &WorkerLimits,
) -> Result<Vec<Completion>, Error> {
    let pb::CompleteJobsRequest { completions } = request;
    let mut v = Violations::default();
    if completions.is_empty() || completions.len() > MAX_COMPLETIONS {
        v.0.push(FieldViolation {
            field: "completions".to_owned(),
            description: format!(
                "must hold 1 to {MAX_COMPLETIONS} completions, got {}",
                completions.len()
            ),
        });
    }
    let mut parsed = Vec::with_capacity(completions.len());
    let mut first_naming = HashMap::new();
    for (i, completion) in completions.into_iter().enumerate() {
        match Completion::parse(completion, limits) {
            Ok(completion) => {
                match first_naming.entry(completion.lease.job_id) {
                    Entry::Occupied(first) => v.0.push(FieldViolation {
                        field: format!("completions[{i}].job_id"),
                        description: format!("names the same job as completions[{}]", first.get()),
                    }),
                    Entry::Vacant(slot) => {
                        slot.insert(i);
                    }
                }
                parsed.push(completion);
            }
            Err(Error::InvalidArgument(violations)) => {
                v.0.extend(violations.into_iter().map(|violation| FieldViolation {
                    field: format!("completions[{i}].{}", violation.field),
                    description: violation.description,
                }));
            }
            Err(other) => return Err(other),
        }
    }
    v.finish(|| Some(parsed))
}

impl TryFrom<pb::FailJobRequest> for Failure {
    type Error = Error;

    fn try_from(request: pb::FailJobRequest) -> Result<Self, Error> {
        let pb::FailJobRequest {
            job_id,
            lease_id,
            error_message,
        } = request;
        let mut v = Violations::default();
        let lease = lease_ref(&mut v, &job_id, &lease_id);
        let error_message = v.check(
            "error_message",
            if error_message.is_empty() || error_message.len() > MAX_ERROR_MESSAGE_LEN {
                Err(format!(
                    "must be 1 to {MAX_ERROR_MESSAGE_LEN} bytes: say what went wrong"
                ))
            } else {
                Ok(error_message)
            },
        );
        v.finish(|| {
            Some(Failure {
                lease: lease?,
                error_message: error_message?,
            })
        })
    }
}

/// Most job_ids one WatchJobs stream may name.
pub const MAX_WATCHED_JOBS: usize = 1000;

fn watched_jobs(ids: &[String]) -> Result<Vec<JobId>, String> {
    if ids.len() > MAX_WATCHED_JOBS {
        return Err(format!(
            "at most {MAX_WATCHED_JOBS} jobs per stream, got {}",
            ids.len()
        ));
    }
    let mut parsed = ids
        .iter()
        .map(|id| uuid(id).map(JobId))
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort_by_key(|id| id.0);
    parsed.dedup();
    Ok(parsed)
}

/// A validated WatchJobs request: what to watch, and where to resume.
pub fn watch_request(
    request: pb::WatchJobsRequest,
) -> Result<(WatchFilter, Option<Position>), Error> {
    let pb::WatchJobsRequest {
        user_id,
        job_ids,
        resume_token,
    } = request;
    let mut v = Violations::default();
    let user_id = if user_id.is_empty() {
        Some(None)
    } else {
        v.check("user_id", uuid(&user_id)).map(|u| Some(UserId(u)))
    };
    let job_ids = v.check("job_ids", watched_jobs(&job_ids));
    let resume = v.check(
        "resume_token",
        if resume_token.is_empty() {
            Ok(None)
        } else {
            crate::resume::decode(&resume_token).map(Some)
        },
    );
    v.finish(|| {
        Some((
            WatchFilter {
                user_id: user_id?,
                job_ids: job_ids?,
            },
            resume?,
        ))
    })
}

fn window(window: &Window) -> pb::QuotaWindow {
    let Window {
        used,
        limit,
        resets_at,
    } = *window;
    pb::QuotaWindow {
        used,
        limit: limit.as_i64(),
        resets_at: resets_at.map(timestamp),
    }
}

impl From<QuotaStatus> for pb::CheckQuotaResponse {
    fn from(status: QuotaStatus) -> Self {
        let QuotaStatus {
            plan,
            monthly,
            hourly,
            refusal,
        } = status;
        pb::CheckQuotaResponse {
            plan,
            allowed: refusal.is_none(),
            reason: match refusal {
                None => String::new(),
                Some(Refusal::RateLimited { .. }) => reason::RATE_LIMIT_EXCEEDED.to_owned(),
                Some(Refusal::QuotaExceeded { .. }) => reason::QUOTA_EXCEEDED.to_owned(),
            },
            monthly: Some(window(&monthly)),
            hourly: Some(window(&hourly)),
        }
    }
}

impl TryFrom<pb::ListJobsRequest> for ListQuery {
    type Error = Error;

    fn try_from(request: pb::ListJobsRequest) -> Result<Self, Error> {
        let pb::ListJobsRequest {
            user_id,
            page_size,
            page_token,
            status,
        } = request;
        let mut v = Violations::default();
        let user_id = v.check("user_id", uuid(&user_id)).map(UserId);
        let page_size = v.check(
            "page_size",
            match page_size {
                0 => Ok(DEFAULT_PAGE_SIZE),
                1..=100 => Ok(page_size.unsigned_abs()),
                _ => Err(format!("must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), got {page_size}")),
            },
        );
        let status = v.check("status", status_filter(status));
        // The token is checked against the listing it continues only when the rest
        // of the request is valid: its errors would otherwise be noise.
        let after = match (user_id, status, page_token.is_empty()) {
            (_, _, true) => Some(None),
            (Some(user_id), Some(status), false) => v
                .check(
                    "page_token",
                    PageToken::decode(&page_token, user_id, status),
                )
                .map(Some),
            _ => None,
        };
        v.finish(|| {
            Some(ListQuery {
                user_id: user_id?,
                status: status?,
                after: after?,
                page_size: page_size?,
            })
        })
    }
}

fn status_filter(value: i32) -> Result<Option<JobStatus>, String> {
    match pb::JobStatus::try_from(value) {
        Ok(pb::JobStatus::Unspecified) => Ok(None),
        Ok(status) => Ok(Some(status_from_pb(status))),
        Err(_) => Err(format!("{value} is not a JobStatus")),
    }
}

fn status_from_pb(status: pb::JobStatus) -> JobStatus {
    match status {
        // Only reached for a filter, where unspecified was handled before.
        pb::JobStatus::Unspecified | pb::JobStatus::Queued => JobStatus::Queued,
        pb::JobStatus::Processing => JobStatus::Processing,
        pb::JobStatus::Completed => JobStatus::Completed,
        pb::JobStatus::Failed => JobStatus::Failed,
        pb::JobStatus::Cancelled => JobStatus::Cancelled,
    }
}

/// The proto value of a stored status; an unknown legacy value is UNSPECIFIED.
pub fn status_to_pb(stored: &str) -> pb::JobStatus {
    match JobStatus::parse(stored) {
        Some(JobStatus::Queued) => pb::JobStatus::Queued,
        Some(JobStatus::Processing) => pb::JobStatus::Processing,
        Some(JobStatus::Completed) => pb::JobStatus::Completed,
        Some(JobStatus::Failed) => pb::JobStatus::Failed,
        Some(JobStatus::Cancelled) => pb::JobStatus::Cancelled,
        None => pb::JobStatus::Unspecified,
    }
}

/// A `Timestamp` for an instant.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(i32::MAX),
    }
}

/// A stored JSON document as a `Struct`; a legacy value that is not an object is
/// kept under the key `value`.
fn json_struct(value: serde_json::Value) -> prost_types::Struct {
    match value {
        serde_json::Value::Object(object) => json::json_to_struct(object),
        other => json::json_to_struct(serde_json::Map::from_iter([("value".to_owned(), other)])),
    }
}

/// A stored JSON document as a `ListValue`; a value that is not an array becomes a
/// one-item list.
fn json_list(value: serde_json::Value) -> prost_types::ListValue {
    match value {
        serde_json::Value::Array(items) => json::json_to_list(items),
        serde_json::Value::Null => json::json_to_list(Vec::new()),
        other => json::json_to_list(vec![other]),
    }
}

/// Reads the stored `token_usage` document: the known figures (also under the
/// camelCase names and `cost` that the TypeScript system may have written), and
/// everything else in `extras`.
fn token_usage(value: serde_json::Value) -> pb::TokenUsage {
    let serde_json::Value::Object(mut object) = value else {
        return pb::TokenUsage {
            extras: Some(json_struct(value)),
            ..pb::TokenUsage::default()
        };
    };
    let mut take = |names: &[&str]| names.iter().find_map(|name| object.remove(*name));
    let input_tokens = take(&["input_tokens", "inputTokens"]);
    let output_tokens = take(&["output_tokens", "outputTokens"]);
    let model = take(&["model"]);
    let cost_usd = take(&["cost_usd", "costUsd", "cost"]);
    pb::TokenUsage {
        input_tokens: input_tokens.and_then(|v| v.as_i64()).unwrap_or_default(),
        output_tokens: output_tokens.and_then(|v| v.as_i64()).unwrap_or_default(),
        model: model
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        cost_usd: cost_usd.and_then(|v| v.as_f64()).unwrap_or_default(),
        extras: (!object.is_empty()).then(|| json::json_to_struct(object)),
    }
}

impl From<Job> for pb::Job {
    fn from(job: Job) -> Self {
        let Job {
            id,
            user_id,
            image_url,
            image_sha256,
            status,
            schema_version,
            prompt_version,
            result,
            error_message,
            processing_time,
            retry_count,
            retry_of_job_id,
            attempt,
            token_usage: usage,
            confidence,
            uncertain_items,
            superfluous_text,
            created_at,
            updated_at,
            started_at,
            completed_at,
            version,
            cancel_requested,
        } = job;
        pb::Job {
            id: id.0.to_string(),
            user_id: user_id.map(|u| u.0.to_string()).unwrap_or_default(),
            image_url,
            image_sha256: image_sha256.unwrap_or_default(),
            status: status_to_pb(&status).into(),
            schema_version,
            prompt_version,
            result: result.map(json_struct),
            error_message: error_message.unwrap_or_default(),
            retry_count,
            retry_of_job_id: retry_of_job_id.map(|j| j.0.to_string()).unwrap_or_default(),
            attempt,
            token_usage: usage.map(token_usage),
            confidence,
            uncertain_items: uncertain_items.map(json_list),
            superfluous_text: superfluous_text.map(json_list),
            processing_time: processing_time.map(|ms| prost_types::Duration {
                seconds: i64::from(ms / 1000),
                nanos: (ms % 1000) * 1_000_000,
            }),
            created_at: Some(timestamp(created_at)),
            updated_at: Some(timestamp(updated_at)),
            started_at: started_at.map(timestamp),
            completed_at: completed_at.map(timestamp),
            version,
            cancel_requested,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(user_id: &str, url: &str, sha: &str) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest {
            user_id: user_id.into(),
            image_url: url.into(),
            image_sha256: sha.into(),
            ..Default::default()
        }
    }

    #[test]
    fn submission_is_normalised() {
        let sha = "AB".repeat(32);
        let new = NewJob::try_from(submit(
            "6f1c5a8e-9f4e-4a53-9d8e-2b2c1f1e0a11",
            "https://cdn/x.jpg",
            &sha,
        ))
        .unwrap();
        assert_eq!(new.image_sha256, "ab".repeat(32));
        assert_eq!(
            (new.schema_version.as_str(), new.prompt_version.as_str()),
            ("stage1", "v1.0")
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let Err(Error::InvalidArgument(violations)) = NewJob::try_from(submit("nope", "", "xyz"))
        else {
            panic!("expected InvalidArgument")
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["user_id", "image_url", "image_sha256"]);
    }

    #[test]
    fn legacy_token_usage_names_are_read() {
        let usage = token_usage(
            serde_json::json!({"inputTokens": 10, "outputTokens": 5, "cost": 0.25, "model": "m", "cached": 3}),
        );
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.cost_usd),
            (10, 5, 0.25)
        );
        assert_eq!(usage.model, "m");
        assert!(usage.extras.unwrap().fields.contains_key("cached"));
    }
}
