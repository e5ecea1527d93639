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
    crate::engine::pg::set_lock_timeout(&mut tx, lock_timeout).await?;
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
    let before = column_numbers(&mut tx, &by_oid).await?;
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
    refuse_filled_per_row(&mut tx, &by_oid, &before).await?;
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

/// The column numbers of each table (by oid) before the change.
async fn column_numbers(
    conn: &mut PgConnection,
    tables: &HashMap<u32, &TableSpec>,
) -> EngineResult<HashMap<u32, Vec<i16>>> {
    let mut out = HashMap::new();
    for oid in tables.keys() {
        let numbers: Vec<i16> = sqlx::query_scalar(
            "SELECT attnum FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
        )
        .bind(sqlx::postgres::types::Oid(*oid))
        .fetch_all(&mut *conn)
        .await
        .context(|| "reading the tables' columns".into())?;
        out.insert(*oid, numbers);
    }
    Ok(out)
}

/// Refuses a change that gives existing rows values each server computes on its own: a column
/// added with an identity, a serial, or a default that is not a constant (`now()` is taken at
/// each server's own moment, `random()` and `nextval` row by row in each server's own row
/// order). The tables would differ from then on. A constant default is the same on both sides.
async fn refuse_filled_per_row(
    conn: &mut PgConnection,
    tables: &HashMap<u32, &TableSpec>,
    before: &HashMap<u32, Vec<i16>>,
) -> EngineResult<()> {
    for (oid, spec) in tables {
        let old = before.get(oid).cloned().unwrap_or_default();
        let filled: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_attribute a
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                AND NOT (a.attnum = ANY($2))
                AND (a.attidentity <> ''
                     OR (a.atthasdef AND a.attgenerated = ''
                         AND EXISTS (SELECT 1 FROM pg_attrdef d
                                      WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum
                                        AND d.adbin::text NOT LIKE '{CONST %')))",
        )
        .bind(sqlx::postgres::types::Oid(*oid))
        .bind(&old)
        .fetch_all(&mut *conn)
        .await
        .context(|| "reading the added columns".into())?;
        if filled.is_empty() {
            continue;
        }
        let relation = spec_relation(*oid, conn).await?;
        let has_rows: bool =
            sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {relation})"))
                .fetch_one(&mut *conn)
                .await
                .context(|| format!("looking at the rows of {}", spec.display_name()))?;
        if has_rows {
            return Err(EngineError::invalid(
                "schema_change_not_replayable",
                format!(
                    "column(s) {} of {} would be filled by each server on its own (an identity, a serial, or a default that is not a constant: computed at each server's own moment or in its own row order): the two sides would differ. Add the column without a default (or with a constant one), fill it with an UPDATE, then set its default or identity; nothing was changed",
                    filled.join(", "),
                    spec.display_name()
                ),
            ));
        }
    }
    Ok(())
}

/// A table's quoted name as it is now (a statement may have renamed it), by oid.
async fn spec_relation(oid: u32, conn: &mut PgConnection) -> EngineResult<String> {
    sqlx::query_scalar("SELECT $1::regclass::text")
        .bind(sqlx::postgres::types::Oid(oid))
        .fetch_one(&mut *conn)
        .await
        .context(|| "naming a table".into())
}
