//! Engine layer: pgshift's bookkeeping on the target, its one writer and reader: the applied
//! tick and each table's copy state, installed with the migration (or, for a reverse migration,
//! with every table synced), advanced by each applied batch, and removed with the migration.
//! (The copy's per-chunk progress is written by `copy.rs`, in the chunk's own transaction.)

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, Row};

use super::error::Context;
use super::ticker::SourceTick;
use super::{quote_ident, EngineError, EngineResult};
use crate::store::{MigrationRecord, TableSpec};

const INSTALL_SQL: &str = include_str!("../../../../sql/target/install.sql");

/// A table's place in the migration, as the target records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableState {
    Pending,
    Copying,
    CatchingUp,
    Synced,
}

impl TableState {
    pub fn as_str(self) -> &'static str {
        match self {
            TableState::Pending => "pending",
            TableState::Copying => "copying",
            TableState::CatchingUp => "catching_up",
            TableState::Synced => "synced",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "copying" => TableState::Copying,
            "catching_up" => TableState::CatchingUp,
            "synced" => TableState::Synced,
            _ => TableState::Pending,
        }
    }

    /// Deleted keys must be remembered while a copy may still bring them back.
    pub fn needs_tombstones(self) -> bool {
        matches!(self, TableState::Pending | TableState::Copying)
    }
}

/// One row of `table_state`.
#[derive(Debug, Clone)]
pub struct TableProgress {
    pub table_no: i32,
    pub state: TableState,
    pub copy_epoch: i32,
    /// Quoted literals of the last copied key; None before the first chunk.
    pub copy_position: Option<Vec<String>>,
    pub rows_copied: i64,
    pub rows_estimated: Option<i64>,
}

/// The last applied tick.
#[derive(Debug, Clone)]
pub struct AppliedTick {
    pub tick_id: i64,
    pub snapshot: String,
    pub tick_time: DateTime<Utc>,
    pub tick_event_seq: i64,
    pub events_applied: i64,
}

pub async fn is_installed(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(conn)
        .await
        .context(|| "looking for pgshift's schema on the target".into())
}

/// Creates the bookkeeping schema, checks the target tables are empty and records the source's first tick
/// as applied: from here on the worker and the copy fill the tables.
pub async fn install(
    conn: &mut PgConnection,
    migration: &MigrationRecord,
    first_tick: &SourceTick,
) -> EngineResult<()> {
    let schema = quote_ident(&migration.schema_name());
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening the install transaction on the target".into())?;
    super::pg::run_script(&mut tx, &INSTALL_SQL.replace("@schema@", &schema))
        .await
        .context(|| "installing pgshift's schema on the target".into())?;
    for t in &migration.tables {
        // pgshift never deletes data on the target on its own: the copy needs empty tables, and
        // rows that arrived since the migration was created are the operator's to look at.
        let has_rows: bool =
            sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {})", t.sql_name()))
                .fetch_one(&mut *tx)
                .await
                .context(|| format!("reading {} on the target", t.display_name()))?;
        if has_rows {
            return Err(EngineError::invalid(
                "target_not_empty",
                format!(
                    "table {} on the target has rows; pgshift copies into empty tables (truncate it, then the migration retries)",
                    t.display_name()
                ),
            ));
        }
    }
    record_start(&mut tx, &schema, migration, Start::Copy, first_tick).await?;
    tx.commit()
        .await
        .context(|| "committing the target install".into())?;
    Ok(())
}

/// Installs the bookkeeping of a reverse migration on the old server with every table synced as
/// of `first_tick`: both sides hold the same rows (the source is frozen and the target drained),
/// so nothing is copied.
///
/// The old server is frozen meanwhile: no lock is waited for longer than `lock_timeout`.
pub async fn install_synced(
    conn: &mut PgConnection,
    reverse: &MigrationRecord,
    first_tick: &SourceTick,
    lock_timeout: std::time::Duration,
) -> EngineResult<()> {
    let quoted = quote_ident(&reverse.schema_name());
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening the reverse install on the old server".into())?;
    super::pg::set_lock_timeout(&mut tx, lock_timeout).await?;
    super::pg::run_script(&mut tx, &INSTALL_SQL.replace("@schema@", &quoted))
        .await
        .context(|| "installing the reverse migration's bookkeeping on the old server".into())?;
    record_start(&mut tx, &quoted, reverse, Start::Synced, first_tick).await?;
    tx.commit()
        .await
        .context(|| "committing the reverse install on the old server".into())
}

/// Where a migration's bookkeeping starts.
#[derive(Clone, Copy)]
enum Start {
    /// A new migration: every table waits for the copy.
    Copy,
    /// A reverse migration: both sides hold the same rows, so every table is synced already.
    Synced,
}

/// Writes the start of `migration`'s bookkeeping into the freshly installed schema (`schema`,
/// quoted) in `tx`: one `table_state` row per table, as `start` says, and `first_tick` as the
/// applied tick.
async fn record_start(
    tx: &mut PgConnection,
    schema: &str,
    migration: &MigrationRecord,
    start: Start,
    first_tick: &SourceTick,
) -> EngineResult<()> {
    let (state, copy_finished_at, tables_step, tick_step) = match start {
        Start::Copy => (
            TableState::Pending,
            "NULL",
            "recording table state",
            "recording the first tick",
        ),
        Start::Synced => (
            TableState::Synced,
            "clock_timestamp()",
            "recording the reverse migration's table states",
            "recording the reverse migration's first tick",
        ),
    };
    for t in &migration.tables {
        sqlx::query(&format!(
            "INSERT INTO {schema}.table_state (table_no, table_name, state, copy_finished_at) VALUES ($1, $2, $3, {copy_finished_at})"
        ))
        .bind(t.no)
        .bind(t.display_name())
        .bind(state.as_str())
        .execute(&mut *tx)
        .await
        .context(|| tables_step.into())?;
    }
    sqlx::query(&format!(
        "INSERT INTO {schema}.applied (tick_id, tick_snapshot, tick_time, tick_event_seq) VALUES ($1, $2, $3, $4)"
    ))
    .bind(first_tick.tick_id)
    .bind(&first_tick.snapshot)
    .bind(first_tick.tick_time)
    .bind(first_tick.event_seq)
    .execute(&mut *tx)
    .await
    .context(|| tick_step.into())?;
    Ok(())
}

/// Records a batch applied up to `tick` (`events` of them), in the batch's own transaction, and
/// marks synced the tables whose catch-up ends at or before it; the new applied tick.
pub async fn record_batch(
    tx: &mut PgConnection,
    schema: &str,
    previous: i64,
    tick: &SourceTick,
    events: i64,
) -> EngineResult<AppliedTick> {
    let schema_sql = quote_ident(schema);
    // Only from the tick this batch started at: a worker of another process that applied a
    // batch meanwhile holds the row until it commits, and then this update finds nothing: the
    // whole batch, written in the same transaction, is rolled back instead of being applied
    // twice (in part or whole).
    let events_applied: Option<i64> = sqlx::query_scalar(&format!(
        "UPDATE {schema_sql}.applied
            SET tick_id = $1, tick_snapshot = $2, tick_time = $3, tick_event_seq = $4,
                applied_at = clock_timestamp(), events_applied = events_applied + $5
          WHERE tick_id = $6
         RETURNING events_applied"
    ))
    .bind(tick.tick_id)
    .bind(&tick.snapshot)
    .bind(tick.tick_time)
    .bind(tick.event_seq)
    .bind(events)
    .bind(previous)
    .fetch_optional(&mut *tx)
    .await
    .context(|| "recording the applied tick".into())?;
    let Some(events_applied) = events_applied else {
        return Err(super::EngineError::invalid(
            "run_fenced",
            format!(
                "tick {} was already applied on the target by another run (another pgshift process?): this batch is rolled back",
                tick.tick_id
            ),
        ));
    };
    sqlx::query(&format!(
        "UPDATE {schema_sql}.table_state SET state = 'synced' WHERE state = 'catching_up' AND catchup_until_tick <= $1"
    ))
    .bind(tick.tick_id)
    .execute(&mut *tx)
    .await
    .context(|| "marking tables synced".into())?;
    Ok(AppliedTick {
        tick_id: tick.tick_id,
        snapshot: tick.snapshot.clone(),
        tick_time: tick.tick_time,
        tick_event_seq: tick.event_seq,
        events_applied,
    })
}

/// Drops the bookkeeping schema; the replicated rows stay.
pub async fn uninstall(conn: &mut PgConnection, schema: &str) -> EngineResult<()> {
    sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quote_ident(schema)
    ))
    .execute(conn)
    .await
    .context(|| "removing pgshift's schema from the target".into())?;
    Ok(())
}

pub async fn applied_tick(conn: &mut PgConnection, schema: &str) -> EngineResult<AppliedTick> {
    let row = sqlx::query(&format!(
        "SELECT tick_id, tick_snapshot, tick_time, tick_event_seq, events_applied FROM {}.applied",
        quote_ident(schema)
    ))
    .fetch_one(conn)
    .await
    .context(|| "reading the applied tick from the target".into())?;
    Ok(AppliedTick {
        tick_id: row.get(0),
        snapshot: row.get(1),
        tick_time: row.get(2),
        tick_event_seq: row.get(3),
        events_applied: row.get(4),
    })
}

pub async fn table_progress(
    conn: &mut PgConnection,
    schema: &str,
) -> EngineResult<Vec<TableProgress>> {
    let rows = sqlx::query(&format!(
        "SELECT table_no, state, copy_epoch, copy_position, rows_copied, rows_estimated
           FROM {}.table_state ORDER BY table_no",
        quote_ident(schema)
    ))
    .fetch_all(conn)
    .await
    .context(|| "reading table states from the target".into())?;
    Ok(rows
        .iter()
        .map(|r| TableProgress {
            table_no: r.get(0),
            state: TableState::parse(r.get(1)),
            copy_epoch: r.get(2),
            copy_position: r.get(3),
            rows_copied: r.get(4),
            rows_estimated: r.get(5),
        })
        .collect())
}

/// Table numbers `table_state` lists.
pub async fn recorded_tables(conn: &mut PgConnection, schema: &str) -> EngineResult<Vec<i32>> {
    sqlx::query_scalar(&format!(
        "SELECT table_no FROM {}.table_state ORDER BY table_no",
        quote_ident(schema)
    ))
    .fetch_all(conn)
    .await
    .context(|| "reading table states from the target".into())
}

/// The tables among `tables` that hold rows on the target.
pub async fn tables_with_rows(
    conn: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Vec<String>> {
    let mut out = Vec::new();
    for t in tables {
        let has_rows: bool =
            sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {})", t.sql_name()))
                .fetch_one(&mut *conn)
                .await
                .context(|| format!("reading {} on the target", t.display_name()))?;
        if has_rows {
            out.push(t.display_name());
        }
    }
    Ok(out)
}

/// Adds tables to a running migration's bookkeeping, waiting for their copy (`pending`), in one
/// transaction that first checks they are empty on the target, as [`install`] does. Their
/// capture must be installed on the source already: the copy's first snapshot, taken later,
/// then holds every change the queue does not.
pub async fn add_tables(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[TableSpec],
) -> EngineResult<()> {
    let quoted = quote_ident(schema);
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening a transaction on the target".into())?;
    let not_empty = tables_with_rows(&mut tx, tables).await?;
    if !not_empty.is_empty() {
        return Err(EngineError::invalid(
            "target_not_empty",
            format!(
                "table(s) {} on the target have rows; pgshift copies into empty tables (truncate them, or add them with empty_target)",
                not_empty.join(", ")
            ),
        ));
    }
    for t in tables {
        sqlx::query(&format!(
            "INSERT INTO {quoted}.table_state (table_no, table_name, state) VALUES ($1, $2, $3)"
        ))
        .bind(t.no)
        .bind(t.display_name())
        .bind(TableState::Pending.as_str())
        .execute(&mut *tx)
        .await
        .context(|| format!("recording the state of {}", t.display_name()))?;
    }
    tx.commit()
        .await
        .context(|| "committing the added tables' states".into())
}

/// Forgets table number `no` in the bookkeeping: its state, what the worker kept for its copy
/// (tombstones, held events), its row type, and the objects still to build that wait for it
/// (schema "create": they would wait for ever). The table's rows on the target stay.
pub async fn remove_table(conn: &mut PgConnection, schema: &str, no: i32) -> EngineResult<()> {
    let quoted = quote_ident(schema);
    let named = |prefix: &str| format!("{quoted}.{}", quote_ident(&format!("{prefix}_{no}")));
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening a transaction on the target".into())?;
    sqlx::query(&format!(
        "DELETE FROM {quoted}.table_state WHERE table_no = $1"
    ))
    .bind(no)
    .execute(&mut *tx)
    .await
    .context(|| "forgetting a table's state".into())?;
    for kept in ["tombstone", "held"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {}", named(kept)))
            .execute(&mut *tx)
            .await
            .context(|| "dropping what the worker kept for a removed table".into())?;
    }
    sqlx::query(&format!("DROP TYPE IF EXISTS {}", named("row")))
        .execute(&mut *tx)
        .await
        .context(|| "dropping a removed table's row type".into())?;
    if super::schema::builds_objects(&mut tx, schema).await? {
        sqlx::query(&format!(
            "DELETE FROM {quoted}.schema_object WHERE $1 = ANY(tables) AND state <> 'built'"
        ))
        .bind(no)
        .execute(&mut *tx)
        .await
        .context(|| "forgetting the objects that waited for a removed table".into())?;
    }
    tx.commit()
        .await
        .context(|| "committing the removal of a table's state".into())
}
