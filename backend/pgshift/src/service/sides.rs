//! Service layer: what both sides of a migration say now, for a single-migration read: how its
//! tables differ between them, and what it does not move as rows of its tables.

use super::App;
use crate::engine::schema::{self, Difference};
use crate::engine::special::{self, SpecialObject};
use crate::store::{DesiredState, MigrationRecord, SchemaMode};

/// What the migration does not move as rows of its tables, as both sides are now; None when a
/// side cannot be read.
pub(super) async fn special_objects(
    app: &App,
    src: &mut sqlx::PgConnection,
    dst: &mut sqlx::PgConnection,
    record: &MigrationRecord,
) -> Option<Vec<SpecialObject>> {
    let read = async {
        let (source_at, target_at) = app.supervisor.dump_sources(record).await?;
        let scope = special::Scope {
            tables: &record.tables,
            mode: record.schema_mode,
            source: &source_at,
            target: &target_at,
        };
        special::list(src, dst, &scope).await
    };
    read.await
        .inspect_err(|e: &crate::engine::EngineError| {
            tracing::debug!(migration = %record.name, error = %e, "cannot list the special objects");
        })
        .ok()
}

/// How the migrated tables differ between the two sides now; None when a side cannot be read,
/// or while pgshift has still to build the target's tables.
pub(super) async fn differences(
    src: &mut sqlx::PgConnection,
    dst: &mut sqlx::PgConnection,
    record: &MigrationRecord,
) -> Option<Vec<Difference>> {
    if record.desired_state == DesiredState::CutOver {
        return None;
    }
    let read = async {
        if record.schema_mode == SchemaMode::Create
            && schema::tables_on_target(dst, &record.tables).await?.len() < record.tables.len()
        {
            return Ok(None);
        }
        schema::compare(src, dst, &record.tables).await.map(Some)
    };
    read.await.unwrap_or_else(|e: crate::engine::EngineError| {
        tracing::debug!(migration = %record.name, error = %e, "cannot compare the two sides' tables");
        None
    })
}
