//! The store layer: pgshift's metadata (clusters, migrations, operations, the audit trail, tokens,
//! users and sessions) behind one trait, so that a PostgreSQL backend can sit beside the embedded
//! SQLite one. Imports only the foundation; the engine and the service layer call it.
//!
//! Layout: the records in `model.rs` and `operation.rs`; one module per backend (`sqlite/`,
//! `postgres/`: its `Store` impl, with its users and sessions in `users.rs`); and `rows.rs`,
//! which decodes every record from a row once for both backends (each backend only says how it
//! reads a column of each kind) and maps unique violations.

mod model;
mod operation;
mod postgres;
mod rows;
mod sqlite;

pub use model::{
    AuditEntry, AuditFilter, Cluster, ColumnSpec, DesiredState, Endpoint, MigrationRecord,
    NewAuditEntry, SchemaMode, TableSpec, TokenRecord,
};
pub use model::{User, UserSession};
pub use operation::{Operation, OperationState, OperationStep, StepOutcome};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
/// The files the SQLite store keeps in the data directory.
pub use sqlite::FILES as SQLITE_FILES;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What can go wrong talking to the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("{0} is still used by a migration")]
    InUse(String),
    #[error("metadata store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("metadata store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("metadata store holds a malformed record: {0}")]
    Corrupt(String),
    /// Holds the URL's scheme only (never the URL: it may carry a password).
    #[error("unsupported metadata URL scheme {0:?}: use postgres:// or postgresql:// for a PostgreSQL store, or leave it unset for SQLite in the data directory")]
    UnsupportedUrl(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Opens the metadata store: SQLite in `data_dir` when `metadata` is `None`, PostgreSQL for a
/// `postgres://` or `postgresql://` URL.
pub async fn open(metadata: Option<&str>, data_dir: &Path) -> StoreResult<Arc<dyn Store>> {
    let Some(url) = metadata else {
        return Ok(Arc::new(SqliteStore::open(data_dir).await?));
    };
    match crate::base::redact::url_scheme(url) {
        Some(s) if s.eq_ignore_ascii_case("postgres") || s.eq_ignore_ascii_case("postgresql") => {
            Ok(Arc::new(PostgresStore::open(url).await?))
        }
        Some(s) => Err(StoreError::UnsupportedUrl(s.to_string())),
        None => Err(StoreError::UnsupportedUrl("(none)".into())),
    }
}

/// The metadata store. Every method is one short transaction; callers never see SQL.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn insert_cluster(&self, cluster: &Cluster) -> StoreResult<()>;
    async fn list_clusters(&self) -> StoreResult<Vec<Cluster>>;
    async fn cluster_by_name(&self, name: &str) -> StoreResult<Option<Cluster>>;
    async fn cluster_by_id(&self, id: Uuid) -> StoreResult<Option<Cluster>>;
    /// Refuses (InUse) while a migration refers to the cluster.
    async fn delete_cluster(&self, id: Uuid) -> StoreResult<()>;

    async fn insert_migration(&self, migration: &MigrationRecord) -> StoreResult<()>;
    async fn list_migrations(&self) -> StoreResult<Vec<MigrationRecord>>;
    async fn migration_by_name(&self, name: &str) -> StoreResult<Option<MigrationRecord>>;
    async fn set_desired_state(&self, id: Uuid, state: DesiredState) -> StoreResult<()>;
    async fn set_last_error(&self, id: Uuid, error: Option<&str>) -> StoreResult<()>;
    async fn delete_migration(&self, id: Uuid) -> StoreResult<()>;
    /// Replaces the migration's tables (and the patterns shown with them), raising the highest
    /// table number it ever gave out to `last_table_no` (never lowering it).
    async fn set_tables(
        &self,
        id: Uuid,
        table_patterns: Option<&[String]>,
        tables: &[TableSpec],
        last_table_no: i32,
    ) -> StoreResult<()>;
    /// The highest table number the migration ever gave out, when recorded (a removed table's
    /// number is not among its tables any more, and is never given out again).
    async fn last_table_no(&self, id: Uuid) -> StoreResult<Option<i32>>;
    /// Appends one entry to the audit trail.
    async fn insert_audit(&self, entry: &NewAuditEntry) -> StoreResult<()>;
    /// Audit entries matching `filter`, newest first.
    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>>;
    /// Records an issued token.
    async fn insert_token(&self, token: &TokenRecord) -> StoreResult<()>;
    /// Every recorded token, revoked and expired ones included, oldest first.
    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    /// Marks the token revoked at `at` (a second revocation keeps the first time). `false` when
    /// no token has that id.
    async fn revoke_token(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<bool>;
    /// Whether the token with this id was revoked, `None` when no token with this id was ever
    /// recorded; read on every authenticated request, so that a revocation holds at once on
    /// every instance sharing the store.
    async fn token_revoked(&self, id: Uuid) -> StoreResult<Option<bool>>;
    /// Stores a new operation.
    async fn insert_operation(&self, op: &Operation) -> StoreResult<()>;
    /// Saves an operation's state, steps, result, error and times (by id).
    async fn update_operation(&self, op: &Operation) -> StoreResult<()>;
    async fn operation_by_id(&self, id: Uuid) -> StoreResult<Option<Operation>>;
    /// Operations on the migration with this name, newest first, at most `limit`.
    async fn list_operations(
        &self,
        migration_name: &str,
        limit: u32,
    ) -> StoreResult<Vec<Operation>>;
    /// Operations still marked running (at start: left so by a crash).
    async fn running_operations(&self) -> StoreResult<Vec<Operation>>;
    /// Cheap round trip used by readiness checks.
    async fn ping(&self) -> StoreResult<()>;

    /// Adds a dashboard user; Duplicate when the name is taken.
    async fn insert_user(&self, user: &User) -> StoreResult<()>;
    async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>>;
    async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<User>>;
    async fn count_users(&self) -> StoreResult<i64>;
    /// Every user, by name.
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// Writes the user's password hash and role (by id) and deletes every session of theirs, in
    /// one transaction; `false` when no user has that id.
    async fn update_user(&self, user: &User) -> StoreResult<bool>;
    /// Deletes the user and every session of theirs; `false` when no user has that id.
    async fn delete_user(&self, id: Uuid) -> StoreResult<bool>;
    async fn insert_session(&self, session: &UserSession) -> StoreResult<()>;
    /// The session with this token hash, expired or not (the caller checks `expires_at`).
    async fn session_by_hash(&self, token_hash: &str) -> StoreResult<Option<UserSession>>;
    async fn delete_session(&self, token_hash: &str) -> StoreResult<()>;
    /// Deletes sessions that expired before `now`; returns how many.
    async fn delete_expired_sessions(&self, now: chrono::DateTime<chrono::Utc>)
        -> StoreResult<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unsupported_scheme_is_refused_without_the_password() {
        let dir = std::env::temp_dir();
        for url in ["mysql://u:secretpw@h/db", "u:secretpw@h/db", ""] {
            let err = match open(Some(url), &dir).await {
                Ok(_) => panic!("{url:?} opened"),
                Err(e) => e,
            };
            assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err:?}");
            let text = format!("{err} {err:?}");
            assert!(!text.contains("secretpw"), "{text}");
            assert!(text.contains("postgresql://"), "{text}");
        }
    }
}
