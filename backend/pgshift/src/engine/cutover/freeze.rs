//! Freezing writes on the source without superuser: a statement-level BEFORE trigger per migrated
//! table (and partition) that raises an error naming the new server. Creating the triggers in one
//! transaction takes each table's SHARE ROW EXCLUSIVE lock, so the freeze waits for the writers
//! in flight and holds new ones back (reads go on); once it commits, every write fails.

use std::time::Duration;

use sqlx::{Connection, PgConnection, Postgres, Transaction};

use crate::engine::error::Context;
use crate::engine::{pg, quote_ident, quote_literal, EngineError, EngineResult};
use crate::store::TableSpec;

const FREEZE_SQL: &str = include_str!("../../../../../sql/source/freeze.sql");
const FREEZE_TABLE_SQL: &str = include_str!("../../../../../sql/source/freeze_table.sql");

/// The error text writers see, e.g. `migration "shop" moved this database to cluster "new"
/// (10.0.0.6:5432, database "shop")`. Never holds credentials.
pub fn message(migration: &str, cluster: &str, host: &str, port: u16, database: &str) -> String {
    format!(
        "pgshift migration {migration:?} moved this database to cluster {cluster:?} ({host}:{port}, database {database:?}); write there"
    )
}

/// Every relation that needs the trigger, quoted and in one fixed order (tables by name, then
/// their partitions), so concurrent freezes lock in the same order.
async fn relations(conn: &mut PgConnection, tables: &[TableSpec]) -> EngineResult<Vec<String>> {
    let mut names: Vec<&TableSpec> = tables.iter().collect();
    names.sort_by_key(|t| t.display_name());
    let mut out = Vec::new();
    for t in names {
        out.push(t.sql_name());
        if t.partitioned {
            let parts: Vec<String> = sqlx::query_scalar(
                "SELECT format('%I.%I', n.nspname, c.relname)
                   FROM pg_partition_tree($1::regclass) p
                   JOIN pg_class c ON c.oid = p.relid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE p.level > 0 ORDER BY 1",
            )
            .bind(t.sql_name())
            .fetch_all(&mut *conn)
            .await
            .context(|| format!("listing partitions of {}", t.display_name()))?;
            out.extend(parts);
        }
    }
    Ok(out)
}

/// Creates the freeze function and triggers inside `tx`: on return the tables are locked against
/// writes until `tx` ends. Committing freezes them; rolling back lets writes go on (the brief
/// lock verification uses).
pub async fn lock_in(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    tables: &[TableSpec],
    message: &str,
    lock_timeout: Duration,
) -> EngineResult<()> {
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    ))
    .execute(&mut **tx)
    .await
    .context(|| "setting lock_timeout".into())?;
    let quoted = quote_ident(schema);
    pg::run_script(
        tx,
        &FREEZE_SQL
            .replace("@schema@", &quoted)
            .replace("@message@", &quote_literal(message)),
    )
    .await
    .context(|| "creating the freeze function on the source".into())?;
    for (i, relation) in relations(tx, tables).await?.iter().enumerate() {
        let sql = FREEZE_TABLE_SQL
            .replace("@trigger@", &quote_ident(&format!("{schema}_freeze_{i}")))
            .replace("@relation@", relation)
            .replace("@schema@", &quoted);
        pg::run_script(tx, &sql).await.map_err(|e| {
            if matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03")) {
                EngineError::invalid(
                    "lock_timeout",
                    format!(
                        "could not lock {relation} within {} ms: a transaction holds it (see pg_stat_activity on the source)",
                        lock_timeout.as_millis()
                    ),
                )
            } else {
                EngineError::Database {
                    context: format!("freezing writes on {relation}"),
                    source: e,
                }
            }
        })?;
    }
    Ok(())
}

/// Freezes writes to the migrated tables, waiting at most `lock_timeout` for writers in flight.
pub async fn freeze(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[TableSpec],
    message: &str,
    lock_timeout: Duration,
) -> EngineResult<()> {
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening the freeze transaction".into())?;
    lock_in(&mut tx, schema, tables, message, lock_timeout).await?;
    tx.commit()
        .await
        .context(|| "committing the freeze".into())
}

/// Lifts the freeze: dropping the function takes every freeze trigger with it (no table
/// ownership needed). Returns whether a freeze was in place.
pub async fn unfreeze(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    let frozen = is_frozen(conn, schema).await?;
    if frozen {
        sqlx::query(&format!(
            "DROP FUNCTION IF EXISTS {}.cutover_freeze() CASCADE",
            quote_ident(schema)
        ))
        .execute(&mut *conn)
        .await
        .context(|| "lifting the freeze on the source".into())?;
    }
    Ok(frozen)
}

/// Whether the migration's freeze function exists in `schema`.
pub async fn is_frozen(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                         WHERE n.nspname = $1 AND p.proname = 'cutover_freeze')",
    )
    .bind(schema)
    .fetch_one(conn)
    .await
    .context(|| "looking for a freeze on the source".into())
}
