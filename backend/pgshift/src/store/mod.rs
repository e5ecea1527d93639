//! The metadata store: cluster definitions and migrations, behind one trait so that a
//! PostgreSQL backend can sit beside the embedded SQLite one.

mod model;
mod sqlite;

pub use model::{Cluster, ColumnSpec, DesiredState, Endpoint, MigrationRecord, TableSpec};
pub use sqlite::SqliteStore;

use async_trait::async_trait;
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
}

pub type StoreResult<T> = Result<T, StoreError>;

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
    /// Cheap round trip used by readiness checks.
    async fn ping(&self) -> StoreResult<()>;
}
