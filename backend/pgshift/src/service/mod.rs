//! The operations behind the API: validation, store and engine calls. HTTP handlers (and later
//! the dashboard) call these; no SQL lives above this layer.

pub mod cluster_probe;
pub mod clusters;
pub mod cutover;
pub mod lag_history;
pub mod migration_preview;
pub mod migrations;
pub mod operations;
pub mod tokens;
pub mod users;

use std::sync::Arc;

use crate::auth::Keys;
use crate::engine::{EngineError, Supervisor};
use crate::secrets::{SecretError, Secrets};
use crate::store::{Store, StoreError};

/// Everything the service layer works with; shared by every request.
pub struct App {
    pub store: Arc<dyn Store>,
    pub supervisor: Supervisor,
    pub keys: Keys,
    /// Encrypts cluster DSNs before they are stored, decrypts them to connect.
    pub secrets: Arc<Secrets>,
    /// Failed dashboard sign-ins, to slow down password guessing.
    pub sign_in_throttle: users::SignInThrottle,
    /// Recent lag and throughput of each migration, for the dashboard's charts.
    pub lag_history: lag_history::LagHistory,
    /// Cutovers and verifications running in this process.
    pub operations: operations::Operations,
}

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

/// Names of clusters and migrations: used in URLs and commands, so keep them plain.
pub fn check_name(kind: &str, name: &str) -> ServiceResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "invalid_name",
            format!("{kind} name {name:?} is not valid: use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"),
        ))
    }
}
