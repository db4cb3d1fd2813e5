//! The domain error and its one mapping to `tonic::Status`.
//!
//! Every refusal carries a `google.rpc.ErrorInfo` with domain [`DOMAIN`] and a
//! reason callers can match on; invalid input also carries a `google.rpc.BadRequest`
//! naming every bad field. Database errors are classified once, in
//! [`crate::storage::StorageError`], and never reach callers as text.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::storage::StorageError;

/// The `ErrorInfo.domain` of every jobq error.
pub const DOMAIN: &str = "jobq";

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

impl Error {
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
            Self::Unavailable(_) => "DATABASE_UNAVAILABLE",
            Self::Aborted(_) => "CONCURRENT_CHANGE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::JobNotFound => Code::NotFound,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Aborted(_) => Code::Aborted,
            Self::Internal(_) => Code::Internal,
        }
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
        let message = match &error {
            Error::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                error.to_string()
            }
            Error::JobNotFound => error.to_string(),
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
        details.set_error_info(reason, DOMAIN, HashMap::<String, String>::new());
        Status::with_error_details(code, message, details)
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
    fn internal_errors_hide_their_detail() {
        let status = Status::from(Error::Internal("relation \"secret\" does not exist".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
