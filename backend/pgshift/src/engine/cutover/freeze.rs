//! Engine layer (cutover): freezing writes on the source without superuser: a statement-level
//! BEFORE trigger per migrated table (and partition) that raises an error naming the new server.
//! Creating a trigger takes the table's SHARE ROW EXCLUSIVE lock, so the freeze waits for the
//! writers in flight and holds new ones back (reads go on); once it commits, every write fails.

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

async fn set_lock_timeout(conn: &mut PgConnection, lock_timeout: Duration) -> EngineResult<()> {
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    ))
    .execute(conn)
    .await
    .context(|| "setting lock_timeout".into())?;
    Ok(())
}

async fn create_function(conn: &mut PgConnection, schema: &str, message: &str) -> EngineResult<()> {
    pg::run_script(
        conn,
        &FREEZE_SQL
            .replace("@schema@", &quote_ident(schema))
            .replace("@message@", &quote_literal(message)),
    )
    .await
    .context(|| "creating the freeze function on the source".into())
}

async fn create_trigger(
    conn: &mut PgConnection,
    schema: &str,
    no: usize,
    relation: &str,
    lock_timeout: Duration,
) -> EngineResult<()> {
    let trigger = quote_ident(&format!("{schema}_freeze_{no}"));
    let sql = FREEZE_TABLE_SQL
        .replace("@trigger@", &trigger)
        .replace("@relation@", relation)
        .replace("@schema@", &quote_ident(schema));
    pg::run_script(&mut *conn, &sql).await.map_err(|e| {
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
    // Replica-role sessions skip ordinary triggers; where pgshift owns the table the freeze
    // holds for them too.
    crate::engine::source::fire_always(conn, relation, &trigger).await
}

/// Creates the freeze function and triggers inside `tx`: on return the tables are locked against
/// writes until `tx` ends. Rolling back lets writes go on: the brief lock verification uses (for
/// one table at a time: several tables locked in one transaction can deadlock with writers).
pub async fn lock_in(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    tables: &[TableSpec],
    message: &str,
    lock_timeout: Duration,
) -> EngineResult<()> {
    set_lock_timeout(tx, lock_timeout).await?;
    create_function(tx, schema, message).await?;
    for (i, relation) in relations(tx, tables).await?.iter().enumerate() {
        create_trigger(tx, schema, i, relation, lock_timeout).await?;
    }
    Ok(())
}

/// Freezes writes to the migrated tables, waiting at most `lock_timeout` for each table's writers
/// in flight. Each table is frozen in its own short transaction, so the freeze never holds one
/// table's lock while waiting for another's (which would deadlock with an application
/// transaction writing both in the other order). The result is the same as one atomic freeze:
/// a transaction that wrote a table before its freeze was waited for, and one that writes it
/// after fails, so once the last table is frozen no transaction that wrote a migrated table is
/// still open. On error, call [`unfreeze`].
pub async fn freeze(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[TableSpec],
    message: &str,
    lock_timeout: Duration,
) -> EngineResult<()> {
    create_function(conn, schema, message).await?;
    for (i, relation) in relations(conn, tables).await?.iter().enumerate() {
        let mut tx = conn
            .begin()
            .await
            .context(|| "opening a freeze transaction".into())?;
        set_lock_timeout(&mut tx, lock_timeout).await?;
        create_trigger(&mut tx, schema, i, relation, lock_timeout).await?;
        tx.commit()
            .await
            .context(|| format!("committing the freeze of {relation}"))?;
    }
    Ok(())
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
