//! The client's typed error.

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
    /// The server or its database is unavailable; the call may be retried.
    #[error("unavailable: {message}")]
    Unavailable {
        /// The server's message.
        message: String,
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
            _ => None,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let details = status.get_error_details();
        let reason = details.error_info().map(|info| info.reason.as_str());
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
            (Code::Unavailable, _) => Self::Unavailable {
                message: status.message().to_owned(),
            },
            _ => Self::Status(status),
        }
    }
}
