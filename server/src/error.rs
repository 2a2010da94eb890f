//! The server's error type and its single mapping to `tonic::Status`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

pub use palisade_compiler::validate::Violation;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; nothing was stored.
    #[error("invalid request: {}", summarize(.0))]
    Invalid(Vec<Violation>),
    /// The named object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Object kind ("policy", "node", …).
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Optimistic concurrency failed.
    #[error("policy {name:?} is at revision {actual}, not the expected {expected}")]
    RevisionMismatch {
        /// Policy name.
        name: String,
        /// The revision the client expected (0: absent).
        expected: u64,
        /// The actual current revision (0: absent).
        actual: u64,
    },
    /// A create-only request (expected revision 0) met a live object.
    #[error("{kind} {name:?} already exists (revision {revision})")]
    AlreadyExists {
        /// Object kind.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Its live revision.
        revision: u64,
    },
    /// The operation is valid but cannot be carried out in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A bounded resource (the server's capture storage) is full.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The operation is part of the API but not built yet.
    #[error("{0} is not implemented yet")]
    Unimplemented(&'static str),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A stored value could not be decoded (corruption or a bug).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A compiler task panicked or was cancelled (a bug, not the request's fault).
    #[error("a compiler task failed")]
    Task(#[from] tokio::task::JoinError),
}

fn summarize(violations: &[Violation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

impl ApiError {
    /// A single-violation error.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(vec![Violation::new(field, description)])
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Invalid(mut violations) => {
                // However a request came to list its problems, the answer stays small.
                violations.truncate(crate::validate::MAX_VIOLATIONS);
                let message = format!("invalid request: {}", summarize(&violations));
                let details = ErrorDetails::with_bad_request(
                    violations.into_iter().map(|v| FieldViolation::new(v.field, v.description)).collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ApiError::NotFound { .. } => Status::not_found(e.to_string()),
            ApiError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
            ApiError::RevisionMismatch { .. } => Status::aborted(e.to_string()),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ApiError::Unimplemented(_) => Status::unimplemented(e.to_string()),
            ApiError::Database(ref source) if is_unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                Status::unavailable("database unavailable, retry later")
            }
            ApiError::Database(ref source) => {
                tracing::error!(error = %source, "database error");
                Status::internal("internal error")
            }
            ApiError::Corrupt(ref detail) => {
                tracing::error!(detail, "corrupt stored data");
                Status::internal("internal error")
            }
            ApiError::Task(ref source) => {
                tracing::error!(error = %source, "compiler task failed");
                Status::internal("internal error")
            }
        }
    }
}

fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_maps_to_invalid_argument_with_field_violations() {
        let status = Status::from(ApiError::Invalid(vec![
            Violation::new("name", "must not be empty"),
            Violation::new("network.connect.rules[0].ports[0]", "port 70000 is above 65535"),
        ]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().expect("bad request details");
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[1].field, "network.connect.rules[0].ports[0]");
    }

    #[test]
    fn errors_map_to_their_codes() {
        let cases = [
            (ApiError::NotFound { kind: "policy", name: "x".into() }, Code::NotFound),
            (ApiError::RevisionMismatch { name: "x".into(), expected: 1, actual: 2 }, Code::Aborted),
            (ApiError::FailedPrecondition("no".into()), Code::FailedPrecondition),
            (ApiError::Unimplemented("compile"), Code::Unimplemented),
            (ApiError::Database(sqlx::Error::PoolTimedOut), Code::Unavailable),
            (ApiError::Database(sqlx::Error::RowNotFound), Code::Internal),
            (ApiError::Corrupt("bad".into()), Code::Internal),
            (ApiError::AlreadyExists { kind: "policy", name: "x".into(), revision: 3 }, Code::AlreadyExists),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[tokio::test]
    async fn a_panicked_compiler_task_is_internal_and_says_nothing_of_the_panic() {
        let join = tokio::task::spawn_blocking(|| -> () { panic!("secret compiler state") }).await.expect_err("panics");
        let status = Status::from(ApiError::from(join));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"), "{}", status.message());
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let status = Status::from(ApiError::Corrupt("secret table layout".into()));
        assert!(!status.message().contains("secret"));
    }
}
