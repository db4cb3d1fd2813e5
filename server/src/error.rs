//! The domain error and its one mapping to `tonic::Status`.
//!
//! Every refusal carries a `google.rpc.ErrorInfo` with domain [`DOMAIN`] and a
//! reason callers can match on; invalid input also carries a `google.rpc.BadRequest`
//! naming every bad field. Database errors are classified once, in
//! [`crate::storage::StorageError`], and never reach callers as text.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use jobq_proto::pb;
use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::job::UserId;
use crate::quota::{QuotaStatus, Refusal};
use crate::storage::StorageError;

/// The `ErrorInfo.domain` of every jobq error.
pub const DOMAIN: &str = "jobq";

/// The `ErrorInfo.reason` values (API.md, "Errors").
pub mod reason {
    /// The monthly quota is spent.
    pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
    /// The rolling-hour limit is reached.
    pub const RATE_LIMIT_EXCEEDED: &str = "RATE_LIMIT_EXCEEDED";
}

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name as the proto spells it (`image_sha256`).
    pub field: String,
    /// What is wrong with it, in words a caller can act on.
    pub description: String,
}

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more fields of the request are invalid; nothing was done.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The job does not exist, or belongs to another user.
    #[error("job not found")]
    JobNotFound,
    /// The user's monthly quota is spent.
    #[error(
        "monthly quota exceeded: {used} of {limit} new jobs this month on plan {plan}; resets at {}",
        rfc3339(*.resets_at)
    )]
    QuotaExceeded {
        /// The user.
        user_id: UserId,
        /// The user's plan.
        plan: String,
        /// New jobs this month.
        used: i64,
        /// The plan's monthly limit.
        limit: i64,
        /// The first instant of the next UTC month.
        resets_at: DateTime<Utc>,
    },
    /// The user's rolling-hour limit is reached.
    #[error(
        "rate limit exceeded: {used} of {limit} new jobs in the last 60 minutes on plan {plan}{}",
        resets_at.map(|at| format!("; a slot frees at {}", rfc3339(at))).unwrap_or_default()
    )]
    RateLimited {
        /// The user.
        user_id: UserId,
        /// The user's plan.
        plan: String,
        /// New jobs in the last 60 minutes.
        used: i64,
        /// The plan's hourly limit.
        limit: i64,
        /// When a slot frees (`None` for a limit of 0).
        resets_at: Option<DateTime<Utc>>,
        /// How long until then.
        retry_after: Option<Duration>,
    },
    /// The failed job is already the last retry allowed.
    #[error(
        "job was retried {retry_count} times already; at most {max_retries} retries are allowed"
    )]
    MaxRetriesExceeded {
        /// The failed job's retry count.
        retry_count: i32,
        /// The most retries allowed.
        max_retries: i32,
    },
    /// The lease is not the job's current one: it expired and the job was
    /// requeued or reclaimed, or it was never issued. Nothing was changed.
    #[error(
        "lease lost: the lease is not the job's current one (expired, or never issued); nothing was changed"
    )]
    LeaseLost,
    /// The operation does not apply to a job in its current status.
    #[error("{operation} does not apply to a job in status {}", .current.as_str_name())]
    InvalidStatus {
        /// What was asked ("RetryJob needs a FAILED job").
        operation: &'static str,
        /// The job's status.
        current: pb::JobStatus,
    },
    /// Too many WatchJobs streams are open.
    #[error("too many open watch streams ({scope} limit {limit}); close one or try again later")]
    TooManyStreams {
        /// Which cap: "user" or "server".
        scope: &'static str,
        /// The cap.
        limit: usize,
    },
    /// The server is shutting down; a stream should reconnect (to another server)
    /// with its last resume token.
    #[error("the server is shutting down; reconnect with the last resume_token received")]
    ServerStopping,
    /// No API key has this id.
    #[error("no API key {0}")]
    KeyNotFound(uuid::Uuid),
    /// The call carried no API key, or one that is not valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's key may not make this call.
    #[error("{0}")]
    PermissionDenied(String),
    /// The database could not be reached; the call may be retried.
    #[error("database unavailable")]
    Unavailable(#[source] StorageError),
    /// A concurrent change conflicted with this one; the call may be retried.
    #[error("conflict with a concurrent change")]
    Aborted(#[source] StorageError),
    /// A bug: something the server should have prevented.
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Error {
    /// The refusal of a new job for `user_id`, as `status` explains it.
    pub fn refused(user_id: UserId, status: QuotaStatus) -> Self {
        match status.refusal {
            Some(Refusal::QuotaExceeded {
                used,
                limit,
                resets_at,
            }) => Self::QuotaExceeded {
                user_id,
                plan: status.plan,
                used,
                limit,
                resets_at,
            },
            Some(Refusal::RateLimited {
                used,
                limit,
                resets_at,
                retry_after,
            }) => Self::RateLimited {
                user_id,
                plan: status.plan,
                used,
                limit,
                resets_at,
                retry_after,
            },
            None => Self::Internal("a submission was refused without a reason".to_owned()),
        }
    }

    /// A single-field `InvalidArgument`.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// The `ErrorInfo.reason` this error is sent with.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::JobNotFound => "JOB_NOT_FOUND",
            Self::QuotaExceeded { .. } => reason::QUOTA_EXCEEDED,
            Self::RateLimited { .. } => reason::RATE_LIMIT_EXCEEDED,
            Self::MaxRetriesExceeded { .. } => "MAX_RETRIES_EXCEEDED",
            Self::InvalidStatus { .. } => "INVALID_STATUS",
            Self::LeaseLost => "LEASE_LOST",
            Self::TooManyStreams { .. } => "TOO_MANY_STREAMS",
            Self::ServerStopping => "SERVER_STOPPING",
            Self::KeyNotFound(_) => "API_KEY_NOT_FOUND",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::Unavailable(_) => "DATABASE_UNAVAILABLE",
            Self::Aborted(_) => "CONCURRENT_CHANGE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::JobNotFound | Self::KeyNotFound(_) => Code::NotFound,
            Self::QuotaExceeded { .. } | Self::RateLimited { .. } | Self::TooManyStreams { .. } => {
                Code::ResourceExhausted
            }
            Self::ServerStopping => Code::Unavailable,
            Self::MaxRetriesExceeded { .. } | Self::InvalidStatus { .. } | Self::LeaseLost => {
                Code::FailedPrecondition
            }
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Aborted(_) => Code::Aborted,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<crate::group_commit::Lost> for Error {
    fn from(lost: crate::group_commit::Lost) -> Self {
        Self::Internal(lost.to_string())
    }
}

impl From<StorageError> for Error {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::Unavailable(_) => Self::Unavailable(error),
            StorageError::SerializationFailure(_) => Self::Aborted(error),
            StorageError::UniqueViolation { .. }
            | StorageError::Other(_)
            | StorageError::Migrate(_) => Self::Internal(error.to_string()),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = error.code();
        let reason = error.reason();
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::<String, String>::new();
        let mut put = |key: &str, value: String| {
            metadata.insert(key.to_owned(), value);
        };
        let message = match &error {
            Error::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                error.to_string()
            }
            Error::JobNotFound
            | Error::LeaseLost
            | Error::ServerStopping
            | Error::KeyNotFound(_)
            | Error::Unauthenticated(_)
            | Error::PermissionDenied(_) => error.to_string(),
            Error::TooManyStreams { scope, limit } => {
                put("scope", (*scope).to_owned());
                put("limit", limit.to_string());
                error.to_string()
            }
            Error::QuotaExceeded {
                user_id,
                plan,
                used,
                limit,
                resets_at,
            } => {
                put("plan", plan.clone());
                put("used", used.to_string());
                put("limit", limit.to_string());
                put("resets_at", rfc3339(*resets_at));
                put("window", "month".to_owned());
                details
                    .add_quota_failure_violation(format!("user:{}", user_id.0), error.to_string());
                error.to_string()
            }
            Error::RateLimited {
                user_id,
                plan,
                used,
                limit,
                resets_at,
                retry_after,
            } => {
                put("plan", plan.clone());
                put("used", used.to_string());
                put("limit", limit.to_string());
                put("window", "hour".to_owned());
                if let Some(at) = resets_at {
                    put("resets_at", rfc3339(*at));
                }
                if let Some(delay) = retry_after {
                    put("retry_after_ms", delay.as_millis().to_string());
                    details.set_retry_info(Some(*delay));
                }
                details
                    .add_quota_failure_violation(format!("user:{}", user_id.0), error.to_string());
                error.to_string()
            }
            Error::MaxRetriesExceeded {
                retry_count,
                max_retries,
            } => {
                put("retry_count", retry_count.to_string());
                put("max_retries", max_retries.to_string());
                error.to_string()
            }
            Error::InvalidStatus { current, .. } => {
                put("current_status", current.as_str_name().to_owned());
                error.to_string()
            }
            Error::Unavailable(source) | Error::Aborted(source) => {
                tracing::warn!(error = %source, reason, "request failed on the database");
                format!("{error}; retry the call")
            }
            Error::Internal(detail) => {
                // The detail may hold database text: it goes to the log, not the caller.
                tracing::error!(detail = %detail, "internal error");
                "internal error".to_owned()
            }
        };
        details.set_error_info(reason, DOMAIN, metadata);
        Status::with_error_details(code, message, details)
    }
}

impl Error {
    /// The `google.rpc.Status` of a call refused with this error (code, message
    /// and details, exactly as the call's own status carries them), for an
    /// answer that reports several outcomes, each of which may be a refusal.
    pub fn into_rpc_status(self) -> tonic_types::pb::Status {
        let status = Status::from(self);
        // The details of a status made by `From<Error>` are an encoded
        // google.rpc.Status (tonic-types' `with_error_details`).
        tonic_types::pb::Status::decode(status.details()).unwrap_or_else(|_| {
            tonic_types::pb::Status {
                code: status.code().into(),
                message: status.message().to_owned(),
                details: Vec::new(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_every_field() {
        let status = Status::from(Error::InvalidArgument(vec![
            FieldViolation {
                field: "user_id".into(),
                description: "not a UUID".into(),
            },
            FieldViolation {
                field: "image_sha256".into(),
                description: "not 64 hex".into(),
            },
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let fields: Vec<_> = details
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["user_id", "image_sha256"]);
        let info = details.error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_ARGUMENT", DOMAIN)
        );
    }

    #[test]
    fn an_rpc_status_is_what_the_call_would_have_carried() {
        let rpc = Error::LeaseLost.into_rpc_status();
        let status = Status::from(Error::LeaseLost);
        assert_eq!(rpc.code, i32::from(Code::FailedPrecondition));
        assert_eq!(rpc.message, status.message());
        assert_eq!(rpc.encode_to_vec(), status.details());
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("LEASE_LOST", DOMAIN)
        );
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let status = Status::from(Error::Internal("relation \"secret\" does not exist".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
