//! The service layer: the operations behind the API and the dashboard (validation, then store
//! and engine calls), the application state they share, and how their failures are answered.
//! Both front ends call only this layer and the types it hands out; no SQL lives above it.

pub mod audit;
pub mod cluster_probe;
pub mod clusters;
pub mod cutover;
pub mod ddl;
mod error;
pub mod lag_history;
pub mod migration_preview;
pub mod migration_tables;
pub mod migrations;
pub mod monitoring;
pub mod operations;
pub mod recovery;
mod sides;
pub mod tokens;
pub mod users;
mod webhooks;

use std::sync::Arc;

use crate::auth::Keys;
use crate::engine::Supervisor;
use crate::secrets::Secrets;
use crate::store::Store;

pub use error::{Answer, ServiceError, ServiceResult};

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
    /// API requests refused for want of a valid token: counted, not audited one by one.
    pub unauthenticated: audit::Unauthenticated,
    /// The reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: audit::TrustedProxies,
}

/// The state every API handler and dashboard page receives.
pub type AppState = Arc<App>;

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
