//! Service layer: what monitoring reads: whether the metadata store answers (`/readyz`), and each
//! stored migration with its live status in this process (`/metrics`). The HTTP layer turns these
//! into answers and figures; it reads neither the store nor the supervisor itself.

use super::{App, ServiceResult};
use crate::engine::MigrationStatus;

/// A stored migration and, while this process runs it, its live status.
pub struct LiveMigration {
    pub name: String,
    /// `None` when this process does not run the migration.
    pub status: Option<MigrationStatus>,
}

/// Whether the metadata store answers a cheap round trip.
pub async fn ready(app: &App) -> ServiceResult<()> {
    Ok(app.store.ping().await?)
}

/// Every stored migration, by name, with its live status in this process.
pub async fn live_migrations(app: &App) -> ServiceResult<Vec<LiveMigration>> {
    Ok(app
        .store
        .list_migrations()
        .await?
        .into_iter()
        .map(|record| LiveMigration {
            status: app.supervisor.status(record.id),
            name: record.name,
        })
        .collect())
}
