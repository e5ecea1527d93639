//! The worker's side of a schema change: the statements run on the target at the event's point
//! of the stream, and the column lists it applies rows with switch to the event's, recorded in
//! `layout` in the same transaction.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::{execute_statements, SchemaChange};
use crate::engine::apply::TablePlan;
use crate::engine::error::Context;
use crate::engine::{quote_ident, row_format, EngineError, EngineResult};
use crate::store::TableSpec;

/// The column lists the worker applies rows with, one per table of `tables` (the migration's
/// record): the target's recorded layout where it has one (a schema change it applied, or the
/// first start), else the record's, which is then recorded. A run that starts again between a
/// schema change on the source and its application on the target thus reads the events before
/// it with the old column lists.
pub(in crate::engine) async fn layout(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[TableSpec],
) -> EngineResult<Vec<TableSpec>> {
    let s = quote_ident(schema);
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {s}.layout (table_no integer PRIMARY KEY, spec jsonb NOT NULL)"
    ))
    .execute(&mut *conn)
    .await
    .context(|| "creating the layout table on the target".into())?;
    let stored: Vec<(i32, serde_json::Value)> =
        sqlx::query_as(&format!("SELECT table_no, spec FROM {s}.layout"))
            .fetch_all(&mut *conn)
            .await
            .context(|| "reading the layout on the target".into())?;
    let stored: HashMap<i32, serde_json::Value> = stored.into_iter().collect();
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        match stored.get(&t.no) {
            Some(spec) => out.push(serde_json::from_value(spec.clone()).map_err(|e| {
                EngineError::invalid(
                    "corrupt_layout",
                    format!("the target's layout of {}: {e}", t.display_name()),
                )
            })?),
            None => {
                record(conn, schema, t).await?;
                out.push(t.clone());
            }
        }
    }
    Ok(out)
}

async fn record(conn: &mut PgConnection, schema: &str, table: &TableSpec) -> EngineResult<()> {
    let spec = serde_json::to_value(table)
        .map_err(|e| EngineError::invalid("invalid_layout", e.to_string()))?;
    sqlx::query(&format!(
        "INSERT INTO {}.layout (table_no, spec) VALUES ($1, $2)
         ON CONFLICT (table_no) DO UPDATE SET spec = EXCLUDED.spec",
        quote_ident(schema)
    ))
    .bind(table.no)
    .bind(spec)
    .execute(&mut *conn)
    .await
    .context(|| format!("recording the layout of {}", table.display_name()))?;
    Ok(())
}

/// Applies a schema change's event inside the batch's transaction: runs its statements, then
/// rebuilds each table's row type and plan for its new column list (and forgets tables it
/// dropped).
pub(in crate::engine) async fn apply_on_target(
    conn: &mut PgConnection,
    schema: &str,
    data: &str,
    plans: &mut HashMap<i32, TablePlan>,
) -> EngineResult<()> {
    let change: SchemaChange = serde_json::from_str(data).map_err(|e| {
        EngineError::invalid(
            "corrupt_event",
            format!("a schema change's event cannot be read: {e}"),
        )
    })?;
    execute_statements(conn, &change.sql, "target")
        .await
        .map_err(|e| {
            EngineError::invalid(
                "schema_change_failed",
                format!(
                    "the schema change {:?} failed on the target: {e}; it ran on the source, so the migration waits here (retrying) until the target lets it run",
                    change.sql
                ),
            )
        })?;
    let s = quote_ident(schema);
    let dropped: Vec<i32> = plans
        .keys()
        .copied()
        .filter(|no| !change.tables.iter().any(|t| t.no == *no))
        .collect();
    for no in dropped {
        plans.remove(&no);
        sqlx::query(&format!("DELETE FROM {s}.layout WHERE table_no = $1"))
            .bind(no)
            .execute(&mut *conn)
            .await
            .context(|| "forgetting a dropped table's layout".into())?;
    }
    for t in &change.tables {
        // Tombstones are keyed like the table (and empty while it is synced): rebuilt for a key
        // that may have changed.
        sqlx::query(&format!(
            "DROP TABLE IF EXISTS {}",
            row_format::tombstone_table(schema, t)
        ))
        .execute(&mut *conn)
        .await
        .context(|| format!("rebuilding the tombstones of {}", t.display_name()))?;
        row_format::prepare_target(conn, schema, std::slice::from_ref(t)).await?;
        let facts = crate::engine::runner::table_facts(conn, t).await?;
        plans.insert(t.no, TablePlan::new(schema, t, &facts));
        record(conn, schema, t).await?;
    }
    // Statements prepared on this session name the old row types by oid: they must be
    // prepared again.
    sqlx::Connection::clear_cached_statements(&mut *conn)
        .await
        .context(|| "forgetting statements prepared for the old columns".into())?;
    Ok(())
}
