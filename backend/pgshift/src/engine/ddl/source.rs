//! The DDL route's transaction on the source: the statements, the migrated tables' new layout
//! read back in the same transaction, capture re-rendered for it, and the event that tells the
//! worker where the change sits in the stream.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use super::{execute_statements, SchemaChange};
use crate::engine::error::Context;
use crate::engine::{catalog, quote_ident, source, EngineError, EngineResult};
use crate::store::{MigrationRecord, TableSpec};

/// Runs `sql` on the source and records it as an event; returns the migrated tables as they are
/// after it (a table it dropped is gone from the list). `lock_timeout` bounds each lock the
/// statements wait for: the application's writes queue behind a waiting DDL lock.
pub async fn run_on_source(
    conn: &mut PgConnection,
    record: &MigrationRecord,
    sql: &str,
    lock_timeout: Duration,
) -> EngineResult<Vec<TableSpec>> {
    let schema = record.schema_name();
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening the schema change's transaction on the source".into())?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    ))
    .execute(&mut *tx)
    .await
    .context(|| "setting lock_timeout".into())?;
    // Tables are followed by oid: a statement may rename them.
    let mut by_oid: HashMap<u32, &TableSpec> = HashMap::new();
    for t in &record.tables {
        let oid: sqlx::postgres::types::Oid = sqlx::query_scalar("SELECT to_regclass($1)::oid")
            .bind(t.sql_name())
            .fetch_optional(&mut *tx)
            .await
            .context(|| format!("finding {} on the source", t.display_name()))?
            .flatten()
            .ok_or_else(|| {
                EngineError::invalid(
                    "table_missing",
                    format!("{} no longer exists on the source", t.display_name()),
                )
            })?;
        by_oid.insert(oid.0, t);
    }
    execute_statements(&mut tx, sql, "source").await.map_err(|e| {
        if e.sqlstate().as_deref() == Some("55P03") {
            EngineError::invalid(
                "lock_timeout",
                format!(
                    "the schema change waited over {} ms for a table lock on the source (another transaction holds it; see pg_stat_activity); nothing was changed",
                    lock_timeout.as_millis()
                ),
            )
        } else if let EngineError::Database { source, .. } = &e {
            // The operator's own statement failed: PostgreSQL's words are what they need.
            match source.as_database_error() {
                Some(db) => EngineError::invalid(
                    "schema_change_failed",
                    format!(
                        "the schema change failed on the source, which is unchanged: {}",
                        db.message()
                    ),
                ),
                None => e,
            }
        } else {
            e
        }
    })?;
    let now = catalog::user_tables(&mut tx).await?;
    let mut tables: Vec<TableSpec> = Vec::new();
    for found in now {
        let Some(before) = by_oid.get(&found.oid) else {
            continue;
        };
        tables.push(TableSpec {
            no: before.no,
            schema: found.schema,
            name: found.name,
            key: found.key,
            key_index: found.key_index,
            columns: found.columns,
            partitioned: found.partitioned,
        });
    }
    tables.sort_by_key(|t| t.no);
    if tables.is_empty() {
        return Err(EngineError::invalid(
            "no_tables_left",
            "the schema change would drop every table of the migration; remove the migration instead",
        ));
    }
    // Capture follows the new layout from this transaction on (a renamed key column, a key
    // added to a table that had none); a dropped table took its triggers with it.
    let schema_q = quote_ident(&schema);
    for t in &tables {
        source::check_partition_layout(&mut tx, t).await?;
        source::replace_capture(&mut tx, &schema, t).await?;
    }
    for old in &record.tables {
        if !tables.iter().any(|t| t.no == old.no) {
            sqlx::query(&format!(
                "DROP FUNCTION IF EXISTS {schema_q}.{}() CASCADE",
                quote_ident(&format!("capture_{}", old.no))
            ))
            .execute(&mut *tx)
            .await
            .context(|| format!("removing the capture of {}", old.display_name()))?;
        }
    }
    let payload = serde_json::to_string(&SchemaChange {
        sql: sql.to_string(),
        tables: tables.clone(),
    })
    .map_err(|e| EngineError::invalid("invalid_schema_change", e.to_string()))?;
    sqlx::query(&format!("SELECT {schema_q}.add_event(0, 'S', $1)"))
        .bind(payload)
        .execute(&mut *tx)
        .await
        .context(|| "recording the schema change in the queue".into())?;
    tx.commit()
        .await
        .context(|| "committing the schema change on the source".into())?;
    Ok(tables)
}
