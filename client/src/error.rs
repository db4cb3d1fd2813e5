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
    #[error("quota exceeded: {used} of {limit} used this month{}", resets(.resets_at))]
    QuotaExceeded {
        /// New jobs this month.
        used: i64,
        /// The plan's monthly limit.
        limit: i64,
        /// The first instant of the next UTC month.
        resets_at: Option<SystemTime>,
    },
    /// The user's rolling-hour limit is reached; a slot frees after `retry_after`.
    #[error("rate limit exceeded: {used} of {limit} in the last hour{}", retry_in(.retry_after))]
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
    /// The worker's lease on the job is no longer the job's current one (it
    /// expired and the job was queued again or went to another worker): stop
    /// working on the job and do not report it.
    #[error("lease lost: the job is no longer this worker's")]
    LeaseLost,
    /// The call carried no API key, or one the server does not accept.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// The server's message.
        message: String,
    },
    /// The API key may not make this call (its role, or the user it is bound to).
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The server's message.
        message: String,
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
            Self::LeaseLost => Some("LEASE_LOST"),
            _ => None,
        }
    }
}

/// Whether `status` was made by this side's transport (the connection failed,
/// or the server closed it while shutting down) rather than sent by the server.
/// Such a status has a transport error as its source, whatever its code (tonic
/// reports a GOAWAY as INTERNAL and a connection closed mid-call as CANCELLED).
pub(crate) fn transport_failure(status: &Status) -> bool {
    std::error::Error::source(status)
        .is_some_and(|source| source.downcast_ref::<tonic::transport::Error>().is_some())
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        // A tonic server cuts a call at its deadline with CANCELLED "Timeout
        // expired"; gRPC calls that DEADLINE_EXCEEDED, and so does this client.
        let status = if status.code() == Code::Cancelled && status.message() == "Timeout expired" {
            Status::deadline_exceeded("the call's deadline passed on the server")
        } else {
            status
        };
        if transport_failure(&status) {
            return Self::Unavailable {
                message: status.message().to_owned(),
            };
        }
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
            (Code::FailedPrecondition, Some("LEASE_LOST")) => Self::LeaseLost,
            (Code::Unauthenticated, _) => Self::Unauthenticated {
                message: status.message().to_owned(),
            },
            (Code::PermissionDenied, _) => Self::PermissionDenied {
                message: status.message().to_owned(),
            },
            (Code::Unavailable, _) => Self::Unavailable {
                message: status.message().to_owned(),
            },
            _ => Self::Status(status),
        }
    }
}

fn resets(at: &Option<SystemTime>) -> String {
    at.map(|at| format!(", resets {}", rfc3339(at)))
        .unwrap_or_default()
}

fn retry_in(after: &Option<Duration>) -> String {
    after
        .map(|after| format!(", next slot in {}s", after.as_secs_f64().ceil()))
        .unwrap_or_default()
}

/// `at` as RFC 3339 in UTC, to the second (`2026-12-01T00:00:00Z`).
pub(crate) fn rfc3339(at: SystemTime) -> String {
    let mut timestamp = prost_types::Timestamp::from(at);
    timestamp.nanos = 0;
    timestamp.to_string()
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

    #[test]
    fn says_a_refusal_in_one_line() {
        let quota = Error::QuotaExceeded {
            used: 5,
            limit: 5,
            resets_at: parse_rfc3339("2026-12-01T00:00:00.000000Z"),
        };
        assert_eq!(
            quota.to_string(),
            "quota exceeded: 5 of 5 used this month, resets 2026-12-01T00:00:00Z"
        );
        let rate = Error::RateLimited {
            used: 10,
            limit: 10,
            retry_after: Some(Duration::from_millis(1_500)),
        };
        assert_eq!(
            rate.to_string(),
            "rate limit exceeded: 10 of 10 in the last hour, next slot in 2s"
        );
    }
}
