//! The client's typed error.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use jobq_proto::pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// One bad field the server named in an `INVALID_ARGUMENT` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The request field, as the proto names it.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request had bad fields; nothing was done.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The server's message.
        message: String,
        /// Every bad field, as the server named it.
        violations: Vec<FieldViolation>,
    },
    /// The job does not exist or belongs to another user.
    #[error("job not found")]
    JobNotFound,
    /// The user's monthly quota is spent; new jobs are accepted again at `resets_at`.
    #[error("monthly quota exceeded: {used} of {limit}")]
    QuotaExceeded {
        /// New jobs this month.
        used: i64,
        /// The plan's monthly limit.
        limit: i64,
        /// The first instant of the next UTC month.
        resets_at: Option<SystemTime>,
    },
    /// The user's rolling-hour limit is reached; a slot frees after `retry_after`.
    #[error("rate limit exceeded: {used} of {limit} in the last hour")]
    RateLimited {
        /// New jobs in the last 60 minutes.
        used: i64,
        /// The plan's hourly limit.
        limit: i64,
        /// How long until a slot frees (`None` when the plan allows none).
        retry_after: Option<Duration>,
    },
    /// The failed job was already retried the most times allowed.
    #[error("max retries exceeded")]
    MaxRetriesExceeded {
        /// The failed job's retry count.
        retry_count: u32,
    },
    /// The operation does not apply to the job's current status.
    #[error("invalid status: {}", .current.as_str_name())]
    InvalidStatus {
        /// The job's status.
        current: pb::JobStatus,
    },
    /// The server or its database is unavailable; the call may be retried.
    #[error("unavailable: {message}")]
    Unavailable {
        /// The server's message.
        message: String,
    },
    /// `wait_for_job` gave up before the job finished.
    #[error("job {job_id} did not finish in time (last status {})", .last_status.as_str_name())]
    Timeout {
        /// The job waited for.
        job_id: uuid::Uuid,
        /// Its last status seen.
        last_status: pb::JobStatus,
    },
    /// The URL given to `connect` is not a valid URI.
    #[error("invalid server URL: {0}")]
    InvalidUrl(String),
    /// The connection to the server could not be made.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server answered with something this client cannot read.
    #[error("unreadable answer: {0}")]
    Decode(String),
    /// Any other refusal, as the server sent it.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Status),
}

impl Error {
    /// The `google.rpc.ErrorInfo` reason of a refusal (`JOB_NOT_FOUND`, ...), when
    /// the server sent one.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Self::InvalidArgument { .. } => Some("INVALID_ARGUMENT"),
            Self::JobNotFound => Some("JOB_NOT_FOUND"),
            Self::QuotaExceeded { .. } => Some("QUOTA_EXCEEDED"),
            Self::RateLimited { .. } => Some("RATE_LIMIT_EXCEEDED"),
            Self::MaxRetriesExceeded { .. } => Some("MAX_RETRIES_EXCEEDED"),
            Self::InvalidStatus { .. } => Some("INVALID_STATUS"),
            _ => None,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let details = status.get_error_details();
        let info = details.error_info();
        let reason = info
            .filter(|info| info.domain == "jobq")
            .map(|info| info.reason.as_str());
        let empty = HashMap::new();
        let metadata = info.map_or(&empty, |info| &info.metadata);
        let number = |key: &str| {
            metadata
                .get(key)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or_default()
        };
        match (status.code(), reason) {
            (Code::InvalidArgument, _) => Self::InvalidArgument {
                message: status.message().to_owned(),
                violations: details
                    .bad_request()
                    .map(|bad| {
                        bad.field_violations
                            .iter()
                            .map(|v| FieldViolation {
                                field: v.field.clone(),
                                description: v.description.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            (Code::NotFound, Some("JOB_NOT_FOUND")) => Self::JobNotFound,
            (Code::ResourceExhausted, Some("QUOTA_EXCEEDED")) => Self::QuotaExceeded {
                used: number("used"),
                limit: number("limit"),
                resets_at: metadata.get("resets_at").and_then(|at| parse_rfc3339(at)),
            },
            (Code::ResourceExhausted, Some("RATE_LIMIT_EXCEEDED")) => Self::RateLimited {
                used: number("used"),
                limit: number("limit"),
                retry_after: details.retry_info().and_then(|info| info.retry_delay),
            },
            (Code::FailedPrecondition, Some("MAX_RETRIES_EXCEEDED")) => Self::MaxRetriesExceeded {
                retry_count: u32::try_from(number("retry_count")).unwrap_or_default(),
            },
            (Code::FailedPrecondition, Some("INVALID_STATUS")) => Self::InvalidStatus {
                current: metadata
                    .get("current_status")
                    .and_then(|name| pb::JobStatus::from_str_name(name))
                    .unwrap_or(pb::JobStatus::Unspecified),
            },
            (Code::Unavailable, _) => Self::Unavailable {
                message: status.message().to_owned(),
            },
            _ => Self::Status(status),
        }
    }
}

/// Reads the `resets_at` the server writes (`2026-12-01T00:00:00.000000Z`).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let timestamp: prost_types::Timestamp = text.parse().ok()?;
    SystemTime::try_from(timestamp).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_servers_timestamps() {
        let at = parse_rfc3339("2026-12-01T00:00:00.000000Z").unwrap();
        assert_eq!(
            at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_796_083_200
        );
        assert!(parse_rfc3339("December").is_none());
    }
}
