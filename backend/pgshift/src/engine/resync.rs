//! Engine layer: resync: one table is copied again from the source while the migration keeps
//! running, for a table an operator found damaged on the target (changed behind pgshift's back,
//! say).
//!
//! The table is emptied on the target and put back to `pending` with a new copy epoch, in one
//! target transaction. From there it is exactly the situation of the initial copy: the worker
//! goes on applying changes (leaving tombstones for deletes while the table copies), and the
//! chunked copy merges only rows the worker has not touched, once the worker has applied every
//! transaction the chunk's snapshot saw.

use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;

use super::error::Context;
use super::{pg, quote_ident, EngineResult};
use crate::store::TableSpec;

/// Empties `table` on the target and marks it for a new copy. The migration's run must be
/// stopped meanwhile (the caller restarts it, and the new run copies the table).
pub async fn reset_table(
    target: &PgConnectOptions,
    schema: &str,
    table: &TableSpec,
) -> EngineResult<()> {
    let mut conn = pg::connect("the target", target).await?;
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening the resync transaction on the target".into())?;
    empty_table(&mut tx, table).await?;
    let s = quote_ident(schema);
    sqlx::query(&format!(
        "UPDATE {s}.table_state
            SET state = 'pending', copy_epoch = copy_epoch + 1, copy_position = NULL, rows_copied = 0,
                rows_estimated = NULL, copy_started_at = NULL, copy_finished_at = NULL,
                catchup_until_tick = NULL
          WHERE table_no = $1"
    ))
    .bind(table.no)
    .execute(&mut *tx)
    .await
    .context(|| "resetting the table's copy state".into())?;
    // What the worker kept for the old copy: tombstones, or a keyless table's held events.
    let kept = if table.key.is_empty() {
        super::apply::keyless::held_table(schema, table)
    } else {
        super::row_format::tombstone_table(schema, table)
    };
    sqlx::query(&format!("DELETE FROM {kept}"))
        .execute(&mut *tx)
        .await
        .context(|| "clearing the table's tombstones".into())?;
    tx.commit()
        .await
        .context(|| format!("committing the resync of {}", table.display_name()))?;
    Ok(())
}

/// Deletes every row of `table` on the target in the caller's transaction, as the copy finds
/// it at the start: foreign keys pointing at it neither cascade nor refuse (their rows come
/// back with the copy, as in the initial copy).
pub async fn empty_table(tx: &mut sqlx::PgConnection, table: &TableSpec) -> EngineResult<()> {
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .context(|| "setting session_replication_role on the target".into())?;
    let referenced: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint
                         WHERE contype = 'f' AND confrelid = $1::regclass AND conrelid <> confrelid)",
    )
    .bind(table.sql_name())
    .fetch_one(&mut *tx)
    .await
    .context(|| format!("looking for foreign keys to {}", table.display_name()))?;
    // TRUNCATE is refused while another table's foreign key points here; DELETE is not.
    let empty = if referenced {
        format!("DELETE FROM {}", table.relation_only())
    } else {
        format!("TRUNCATE {}", table.relation_only())
    };
    sqlx::query(&empty)
        .execute(&mut *tx)
        .await
        .context(|| format!("emptying {} on the target", table.display_name()))?;
    Ok(())
}

/// Empties `tables` on the target in one transaction, for tables added to a migration whose
/// rows there the operator chose to replace (`empty_target`); pgshift never does it unasked.
pub async fn empty_tables(target: &PgConnectOptions, tables: &[TableSpec]) -> EngineResult<()> {
    let mut conn = pg::connect("the target", target).await?;
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening a transaction on the target".into())?;
    for table in tables {
        empty_table(&mut tx, table).await?;
    }
    tx.commit()
        .await
        .context(|| "committing the emptied tables".into())
}
