//! Engine layer, source capture: installing change capture on the source database and
//! removing it, checking that an installed capture is of this pgshift's format, and giving
//! partitions that join a table later their statement triggers. The SQL comes from
//! [`render`]; what the running migration checks on the source lives in [`drift`].

mod drift;
mod render;

use sqlx::{Connection, PgConnection, Row};

use super::error::Context;
use super::{key_ops, quote_ident, EngineResult};
use crate::store::{MigrationRecord, TableSpec};

pub use drift::{check_columns, check_partition_layout};
pub(super) use render::key_row;
use render::{
    install_sql, row_trigger_sql, statement_triggers_sql, table_capture_sql, trigger_name,
    STATEMENT_TRIGGERS,
};

/// Whether capture for this migration is installed on the source.
pub async fn is_installed(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(conn)
        .await
        .context(|| "looking for the capture schema on the source".into())
}

/// Refuses a capture schema installed by an older pgshift: one whose events are JSON (its rows
/// cannot be read as record text), one without the statement triggers that keep nested changes
/// in order (table_capture.sql), or one whose capture knows pgshift's sessions by a plain
/// setting instead of a secret (pg/marker.rs).
pub async fn check_format(conn: &mut PgConnection, schema: &str) -> EngineResult<()> {
    let current: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
                         WHERE attrelid = to_regclass(format('%I.event', $1::text)) AND attname = 'ev_data')
            AND to_regproc(format('%I.statement_bound', $1::text)) IS NOT NULL
            AND to_regproc(format('%I.capture_row', $1::text)) IS NOT NULL
            AND to_regclass(format('%I.marker', $1::text)) IS NOT NULL",
    )
    .bind(schema)
    .fetch_one(conn)
    .await
    .context(|| "reading the capture schema's event format".into())?;
    if current {
        return Ok(());
    }
    Err(super::EngineError::invalid(
        "capture_outdated",
        "the capture on the source was installed by an older pgshift with another capture format; remove the migration and create it again",
    ))
}

/// Every partition below a partitioned table, quoted: statements aimed straight at a partition
/// fire only that partition's triggers.
async fn partitions(conn: &mut PgConnection, table: &TableSpec) -> EngineResult<Vec<String>> {
    let rows = sqlx::query(
        "SELECT format('%I.%I', n.nspname, c.relname)
           FROM pg_partition_tree($1::regclass) p
           JOIN pg_class c ON c.oid = p.relid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE p.level > 0",
    )
    .bind(table.sql_name())
    .fetch_all(&mut *conn)
    .await
    .context(|| format!("listing partitions of {}", table.display_name()))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Makes a capture trigger fire in sessions with `session_replication_role = replica` too
/// (restore jobs, ETL, other replication tools), which skip ordinary triggers. That needs the
/// table's owner; without it the trigger stays as it is, and the cutover's gates say which
/// tables such sessions could change unseen.
pub(crate) async fn fire_always(
    conn: &mut PgConnection,
    relation: &str,
    trigger: &str,
) -> EngineResult<()> {
    sqlx::query("SAVEPOINT pgshift_always")
        .execute(&mut *conn)
        .await
        .context(|| "opening a savepoint".into())?;
    let enabled = sqlx::query(&format!(
        "ALTER TABLE {relation} ENABLE ALWAYS TRIGGER {trigger}"
    ))
    .execute(&mut *conn)
    .await;
    let end = match enabled {
        Ok(_) => "RELEASE SAVEPOINT pgshift_always",
        Err(err) => {
            tracing::info!(%relation, error = %err, "capture cannot fire for replica sessions (not the table's owner)");
            "ROLLBACK TO SAVEPOINT pgshift_always"
        }
    };
    sqlx::query(end)
        .execute(&mut *conn)
        .await
        .context(|| "closing a savepoint".into())?;
    Ok(())
}

/// Gives a partition that joined the table since install its statement triggers (row triggers
/// reach it by themselves), unless it still has them from an earlier time in the table.
pub(super) async fn add_statement_triggers(
    conn: &mut PgConnection,
    schema: &str,
    table: &TableSpec,
    relation: &str,
) -> EngineResult<()> {
    let present: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2)",
    )
    .bind(relation)
    .bind(format!("!{schema}_{}_truncate", table.no))
    .fetch_one(&mut *conn)
    .await
    .context(|| format!("looking for the capture triggers of {relation}"))?;
    if present {
        return Ok(());
    }
    super::pg::run_script(conn, &statement_triggers_sql(schema, table, relation))
        .await
        .context(|| format!("installing the statement capture triggers on {relation}"))?;
    for suffix in STATEMENT_TRIGGERS {
        fire_always(conn, relation, &trigger_name(schema, table, suffix)).await?;
    }
    Ok(())
}

/// Installs the queue, the tick function and a trigger set per table, and takes the first tick
/// inside the same transaction. Every event therefore belongs to a transaction that is not
/// visible in that first tick, so the worker starting from it misses nothing.
pub async fn install(conn: &mut PgConnection, migration: &MigrationRecord) -> EngineResult<()> {
    // Creating triggers waits for writers of each table; don't queue behind a long transaction forever.
    install_within(conn, migration, std::time::Duration::from_secs(30)).await
}

/// [`install`], waiting at most `lock_timeout` for each table's lock; a table that stays locked
/// fails the install naming it (error code `lock_timeout`).
pub async fn install_within(
    conn: &mut PgConnection,
    migration: &MigrationRecord,
    lock_timeout: std::time::Duration,
) -> EngineResult<()> {
    // The install locks the tables one after another; a session writing two of them in
    // another order (the application, or the worker applying to the new server when a cutover
    // arms the way back) can deadlock with it. When PostgreSQL picks the install as the victim,
    // its transaction is rolled back whole and it is safe to run again.
    let mut attempts = 0;
    let installed = loop {
        attempts += 1;
        match install_in_one(conn, migration, lock_timeout).await {
            Err(e) if e.sqlstate().as_deref() == Some("40P01") && attempts < 5 => {
                tracing::info!(migration = %migration.name, attempts, "installing capture met a deadlock; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200 * attempts)).await;
            }
            other => break other,
        }
    };
    match installed {
        Err(e) if e.sqlstate().as_deref() == Some("55P03") => Err(super::EngineError::invalid(
            "lock_timeout",
            format!(
                "installing capture on {}: a table stayed locked for over {} ms (another transaction holds it; see pg_stat_activity): {e}",
                migration.name,
                lock_timeout.as_millis()
            ),
        )),
        other => other,
    }
}

/// Installs one table's capture function and its row and statement triggers (on every
/// partition too) in the caller's transaction.
async fn install_table(tx: &mut PgConnection, schema: &str, table: &TableSpec) -> EngineResult<()> {
    check_partition_layout(&mut *tx, table).await?;
    let ops = key_ops::key_operators(&mut *tx, table).await?;
    super::pg::run_script(&mut *tx, &table_capture_sql(schema, table, &ops))
        .await
        .context(|| format!("installing capture functions for {}", table.display_name()))?;
    super::pg::run_script(&mut *tx, &row_trigger_sql(schema, table))
        .await
        .context(|| format!("installing the capture trigger on {}", table.display_name()))?;
    let mut relations = vec![table.sql_name()];
    if table.partitioned {
        relations.extend(partitions(&mut *tx, table).await?);
    }
    for relation in relations {
        super::pg::run_script(&mut *tx, &statement_triggers_sql(schema, table, &relation))
            .await
            .context(|| format!("installing the statement capture triggers on {relation}"))?;
        // Partitions' row triggers are clones that follow the parent's setting.
        if relation == table.sql_name() {
            fire_always(&mut *tx, &relation, &trigger_name(schema, table, "")).await?;
        }
        for suffix in STATEMENT_TRIGGERS {
            fire_always(&mut *tx, &relation, &trigger_name(schema, table, suffix)).await?;
        }
    }
    if table.partitioned {
        super::partitions::record(&mut *tx, schema, table).await?;
    }
    Ok(())
}

async fn install_in_one(
    conn: &mut PgConnection,
    migration: &MigrationRecord,
    lock_timeout: std::time::Duration,
) -> EngineResult<()> {
    let schema = migration.schema_name();
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening the install transaction on the source".into())?;
    super::pg::set_lock_timeout(&mut tx, lock_timeout).await?;
    super::pg::run_script(&mut tx, &install_sql(&schema))
        .await
        .context(|| "installing the capture schema on the source".into())?;
    super::pg::marker::ensure(&mut tx, &schema).await?;
    for table in &migration.tables {
        install_table(&mut tx, &schema, table).await?;
    }
    sqlx::query(&format!("SELECT {}.tick()", quote_ident(&schema)))
        .execute(&mut *tx)
        .await
        .context(|| "taking the first tick".into())?;
    tx.commit()
        .await
        .context(|| "committing the capture install".into())?;
    Ok(())
}

/// Replaces a table's capture function with one rendered for `table` as it is now (the DDL
/// route, after a change of its columns or key). In place: the triggers keep calling it.
pub(crate) async fn replace_capture(
    conn: &mut PgConnection,
    schema: &str,
    table: &TableSpec,
) -> EngineResult<()> {
    let ops = key_ops::key_operators(&mut *conn, table).await?;
    let sql = table_capture_sql(schema, table, &ops).replacen(
        "CREATE FUNCTION",
        "CREATE OR REPLACE FUNCTION",
        1,
    );
    super::pg::run_script(&mut *conn, &sql)
        .await
        .context(|| format!("replacing the capture function of {}", table.display_name()))
}

/// Removes everything this migration installed on the source. The trigger functions live in the
/// schema, so dropping it with CASCADE takes the triggers with it (no table ownership needed).
/// Dropping a trigger locks its table ACCESS EXCLUSIVE, and the application's queries queue behind
/// a waiting request: each attempt waits only briefly and the next comes after a pause (see
/// [`super::pg::LockRetry`]), until `cancel` fires or the attempts give up naming the sessions
/// that hold the tables.
pub async fn uninstall(
    conn: &mut PgConnection,
    schema: &str,
    cancel: Option<&tokio_util::sync::CancellationToken>,
) -> EngineResult<()> {
    // The tables carrying this schema's triggers, to name who holds them if it comes to that.
    let relations: Vec<sqlx::postgres::types::Oid> = sqlx::query_scalar(
        "SELECT DISTINCT t.tgrelid
           FROM pg_trigger t
           JOIN pg_proc p ON p.oid = t.tgfoid
           JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = $1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .context(|| "listing the tables that carry capture triggers".into())?;
    super::pg::run_with_short_locks(
        conn,
        &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)),
        "removing the capture schema from the source",
        &relations,
        super::pg::LockRetry::default(),
        cancel,
    )
    .await
}

/// The numbers of the tables whose capture is installed in the migration's schema (each has its
/// capture function `capture_<no>`).
pub async fn captured_tables(conn: &mut PgConnection, schema: &str) -> EngineResult<Vec<i32>> {
    sqlx::query_scalar(
        "SELECT substring(p.proname from '^capture_([0-9]+)$')::int
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = $1 AND p.proname ~ '^capture_[0-9]+$'
          ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
    .context(|| "listing the tables captured on the source".into())
}

/// Installs capture for tables added to a running migration, all in one transaction that waits
/// at most `lock_timeout` for each table (like [`install_within`]). Their changes are queued
/// from its commit on; the copy that follows reads them in later snapshots.
pub async fn install_tables(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[TableSpec],
    lock_timeout: std::time::Duration,
) -> EngineResult<()> {
    let installed = async {
        let mut tx = conn
            .begin()
            .await
            .context(|| "opening the capture install on the source".into())?;
        super::pg::set_lock_timeout(&mut tx, lock_timeout).await?;
        for table in tables {
            install_table(&mut tx, schema, table).await?;
        }
        tx.commit()
            .await
            .context(|| "committing the capture install".into())
    }
    .await;
    match installed {
        Err(e) if e.sqlstate().as_deref() == Some("55P03") => Err(super::EngineError::invalid(
            "lock_timeout",
            format!(
                "installing capture on {}: a table stayed locked for over {} ms (another transaction holds it; see pg_stat_activity): {e}",
                tables.iter().map(TableSpec::display_name).collect::<Vec<_>>().join(", "),
                lock_timeout.as_millis()
            ),
        )),
        other => other,
    }
}

/// Removes the capture of table number `no` from the source (its functions and triggers, on
/// partitions too); the events of it still queued stay, and the worker skips them (no table of
/// the migration has that number any more). Waits for the table's lock as [`uninstall`] does.
pub async fn remove_table(
    conn: &mut PgConnection,
    schema: &str,
    no: i32,
    cancel: Option<&tokio_util::sync::CancellationToken>,
) -> EngineResult<()> {
    let relations: Vec<sqlx::postgres::types::Oid> =
        sqlx::query_scalar("SELECT DISTINCT tgrelid FROM pg_trigger WHERE tgname = ANY($1)")
            .bind(
                ["", "_truncate", "_end"]
                    .iter()
                    .map(|suffix| format!("!{schema}_{no}{suffix}"))
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *conn)
            .await
            .context(|| "listing the tables that carry the capture triggers".into())?;
    super::pg::run_with_short_locks(
        conn,
        &render::remove_table_sql(schema, no),
        "removing a table's capture from the source",
        &relations,
        super::pg::LockRetry::default(),
        cancel,
    )
    .await
}
