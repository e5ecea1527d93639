//! Service layer: why an operation failed, and how each failure is answered. The API and the
//! dashboard answer alike (the same status, code and words; one as JSON, one as a page), so the
//! classification lives here, below both. Anything the caller can fix is a 4xx with words they
//! can act on; internal detail is logged when the answer is made, never put in it.

use axum::http::StatusCode;

use crate::engine::EngineError;
use crate::secrets::SecretError;
use crate::store::StoreError;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Invalid {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ServiceError::Conflict {
            code,
            message: message.into(),
        }
    }
}

impl From<SecretError> for ServiceError {
    fn from(err: SecretError) -> Self {
        // The message names key ids at most: never plaintext or key material.
        ServiceError::Engine(EngineError::invalid(
            "secret_unreadable",
            format!("cannot encrypt or decrypt a cluster's stored DSN: {err}"),
        ))
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// How a failure is answered: a status, a stable machine-readable code, and a message for people.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Answer {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A bug or an outage of pgshift's own: the detail goes to the log only.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }
}

impl From<EngineError> for Answer {
    fn from(err: EngineError) -> Self {
        let unprocessable = |code, err: &EngineError| {
            Answer::new(StatusCode::UNPROCESSABLE_ENTITY, code, err.to_string())
        };
        match &err {
            EngineError::InvalidDsn(_) => unprocessable("invalid_dsn", &err),
            EngineError::Unreachable { .. } => unprocessable("unreachable", &err),
            EngineError::AuthenticationFailed { .. } => {
                unprocessable("authentication_failed", &err)
            }
            EngineError::DatabaseMissing { .. } => unprocessable("database_not_found", &err),
            EngineError::MissingPrivilege(_) => unprocessable("missing_privilege", &err),
            EngineError::Invalid {
                code: "target_not_empty",
                ..
            } => Answer::new(StatusCode::CONFLICT, "target_not_empty", err.to_string()),
            EngineError::Invalid { code, .. } => unprocessable(code, &err),
            EngineError::OnTable { .. } => match err {
                EngineError::OnTable { source, .. } => Answer::from(*source),
                _ => Answer::internal(&"error classification"),
            },
            EngineError::Database { context, source } => {
                // The server's own message stays in the log: it can carry data values.
                tracing::warn!(%context, error = %source, "database error while serving a request");
                Answer::new(
                    StatusCode::BAD_GATEWAY,
                    "database_error",
                    format!("a PostgreSQL server returned an error while {context}; the pgshift log has the details"),
                )
            }
            EngineError::Busy(_) => {
                Answer::new(StatusCode::CONFLICT, "tables_busy", err.to_string())
            }
            // An outage of pgshift's own store: a 5xx, detail logged (see `From<StoreError>`).
            EngineError::Store(_) => match err {
                EngineError::Store(e) => Answer::from(e),
                _ => Answer::internal(&"error classification"),
            },
            EngineError::Cancelled => Answer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ),
        }
    }
}

impl From<StoreError> for Answer {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Duplicate(what) => Answer::new(
                StatusCode::CONFLICT,
                "duplicate_name",
                format!("{what} already exists"),
            ),
            StoreError::InUse(by) => Answer::new(
                StatusCode::CONFLICT,
                "in_use",
                format!("still used by {by}"),
            ),
            other => Answer::internal(&other),
        }
    }
}

impl From<ServiceError> for Answer {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::NotFound(what) => Answer::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            ServiceError::Invalid { code, message } => {
                Answer::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            ServiceError::Conflict { code, message } => {
                Answer::new(StatusCode::CONFLICT, code, message)
            }
            ServiceError::Engine(e) => e.into(),
            ServiceError::Store(e) => e.into(),
        }
    }
}
