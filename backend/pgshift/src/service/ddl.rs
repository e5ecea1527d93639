//! Service layer: the DDL route: a schema change applied on both sides at the same point of the
//! stream (engine/ddl.rs), for admins. The request is audited like every state-changing call;
//! the statements themselves are logged and travel in the source's queue.

use std::time::Duration;

use super::migrations::{cut_over, find, view, MigrationView};
use super::{App, ServiceError, ServiceResult};
use crate::engine::{ddl, pg};
use crate::store::DesiredState;

/// The longest schema change accepted, in bytes.
pub const MAX_SQL_BYTES: usize = 1 << 20;

/// How long the statements wait for each table lock on the source: the application's writes
/// queue behind a waiting DDL lock.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `sql` on the source with the event that carries it to the target, records the tables'
/// new column lists and restarts the run with them. Refused unless the migration runs with every
/// table synced and no operation under way.
pub async fn run(app: &App, name: &str, sql: &str) -> ServiceResult<MigrationView> {
    if sql.trim().is_empty() {
        return Err(ServiceError::invalid("invalid_sql", "sql is empty"));
    }
    if sql.len() > MAX_SQL_BYTES {
        return Err(ServiceError::invalid(
            "invalid_sql",
            format!("sql is longer than {MAX_SQL_BYTES} bytes"),
        ));
    }
    let record = find(app, name).await?;
    match record.desired_state {
        DesiredState::Running => {}
        DesiredState::CutOver => return Err(cut_over(name)),
        DesiredState::Created | DesiredState::Paused => {
            return Err(ServiceError::conflict(
                "not_running",
                format!(
                    "migration {name:?} is not running; start or resume it before a schema change"
                ),
            ))
        }
    }
    let _held = app
        .operations
        .hold(record.id, name, "a schema change".into())?;
    // A table still copying reads the source with the column list of its copy: a change under
    // it would need the copy to start again. Changes wait until everything is synced.
    let live = app.supervisor.status(record.id);
    let synced = match live {
        Some(s) if s.error.is_some() => false,
        Some(s) if s.all_synced() => true,
        // A run that has just started (after an earlier change, say) has not read the tables'
        // states yet: the target's bookkeeping says.
        _ => app.supervisor.inspect(&record).await?.all_synced(),
    };
    if !synced {
        return Err(ServiceError::conflict(
            "not_synced",
            format!("migration {name:?} has tables that are not synced (or an error): a schema change goes through once every table is synced"),
        ));
    }
    let (source, _) = app.supervisor.endpoints(&record).await?;
    let mut conn = pg::connect("the source", &source).await?;
    let tables = ddl::run_on_source(&mut conn, &record, sql, LOCK_TIMEOUT).await?;
    tracing::info!(migration = %name, sql = %sql, "schema change committed on the source");
    let last_no = record.tables.iter().map(|t| t.no).max().unwrap_or(0);
    app.store
        .set_tables(
            record.id,
            record.table_patterns.as_deref(),
            &tables,
            last_no,
        )
        .await?;
    // The run's source watch compares the source with the tables it started with: it starts
    // again with the new ones (the worker reads events before the change with the old lists).
    app.supervisor.stop(record.id).await;
    let record = find(app, name).await?;
    app.supervisor.start(&record).await?;
    view(app, &record).await
}
