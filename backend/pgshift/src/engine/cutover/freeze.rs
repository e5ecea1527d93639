//! Engine layer (cutover): freezing writes on the source without superuser: a statement-level
//! BEFORE trigger per migrated table (and partition) that raises an error. Creating a trigger
//! takes the table's SHARE ROW EXCLUSIVE lock, so the freeze waits for the writers in flight
//! and holds new ones back (reads go on); once it commits, every write fails. While a cutover
//! runs the freeze says "cutover in progress" and has a deadline the source enforces itself;
//! the finish makes it permanent and says where the database moved.

use std::time::Duration;

use sqlx::{Connection, PgConnection, Postgres, Transaction};

use crate::engine::error::Context;
use crate::engine::{pg, quote_ident, quote_literal, EngineError, EngineResult};
use crate::store::TableSpec;

const FREEZE_SQL: &str = include_str!("../../../../../sql/source/freeze.sql");
const FREEZE_TABLE_SQL: &str = include_str!("../../../../../sql/source/freeze_table.sql");

/// The finish makes the freeze permanent only while at least this much is left before its
/// deadline: a statement that fires the trigger just before the replacement commits still sees
/// the old function, and must still be refused by it.
const FINISH_MARGIN_SECONDS: f64 = 2.0;

/// What writers see while the cutover runs, e.g. `pgshift migration "shop" is cutting over to
/// cluster "new": cutover in progress, writes are paused`. Names no address: the target is not
/// ready to take writes until the finish.
pub fn in_progress_message(migration: &str, cluster: &str) -> String {
    format!(
        "pgshift migration {migration:?} is cutting over to cluster {cluster:?}: cutover in progress, writes are paused"
    )
}

const IN_PROGRESS_HINT: &str = "retry shortly: writes resume here if the cutover stops, and go to the new server once it has finished";

/// The error text writers see once the cutover has finished, e.g. `migration "shop" moved this
/// database to cluster "new" (10.0.0.6:5432, database "shop")`. Never holds credentials.
pub fn moved_message(
    migration: &str,
    cluster: &str,
    host: &str,
    port: u16,
    database: &str,
) -> String {
    format!(
        "pgshift migration {migration:?} moved this database to cluster {cluster:?} ({host}:{port}, database {database:?}); write there"
    )
}

const MOVED_HINT: &str = "point the application at the new server";

/// A freeze in place: the function the triggers call, its deadline (seconds since the epoch on
/// the source's clock) and how many relations it covers. The finish checks that it is still
/// this freeze (not lifted and made again meanwhile) before making it permanent.
#[derive(Debug, Clone)]
pub struct Frozen {
    function: u32,
    pub deadline: f64,
    relations: usize,
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

/// `deadline`: seconds since the epoch on the source's clock, or `None` for a permanent freeze.
async fn create_function(
    conn: &mut PgConnection,
    schema: &str,
    message: &str,
    hint: &str,
    deadline: Option<f64>,
) -> EngineResult<()> {
    let deadline = match deadline {
        Some(at) => format!("'{at:.3}'::float8"),
        None => "'infinity'::float8".into(),
    };
    pg::run_script(
        conn,
        &FREEZE_SQL
            .replace("@schema@", &quote_ident(schema))
            .replace("@message@", &quote_literal(message))
            .replace("@hint@", &quote_literal(hint))
            .replace("@deadline@", &deadline),
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
    crate::engine::pg::set_lock_timeout(tx, lock_timeout).await?;
    create_function(tx, schema, message, "retry shortly", None).await?;
    for (i, relation) in relations(tx, tables).await?.iter().enumerate() {
        create_trigger(tx, schema, i, relation, lock_timeout).await?;
    }
    Ok(())
}

/// Freezes writes to the migrated tables, waiting at most `lock_timeout` for each table's writers
/// in flight, until the source's clock passes `limit` from now (or the finish makes the freeze
/// permanent with [`make_permanent`]). Each table is frozen in its own short transaction, so the
/// freeze never holds one table's lock while waiting for another's (which would deadlock with
/// an application transaction writing both in the other order). The result is the same as one
/// atomic freeze: a transaction that wrote a table before its freeze was waited for, and one
/// that writes it after fails, so once the last table is frozen no transaction that wrote a
/// migrated table is still open. On error, call [`unfreeze`].
pub async fn freeze(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[TableSpec],
    message: &str,
    lock_timeout: Duration,
    limit: Duration,
) -> EngineResult<Frozen> {
    let deadline: f64 = sqlx::query_scalar(
        "SELECT pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) + $1::float8",
    )
    .bind(limit.as_secs_f64())
    .fetch_one(&mut *conn)
    .await
    .context(|| "reading the source's clock".into())?;
    create_function(conn, schema, message, IN_PROGRESS_HINT, Some(deadline)).await?;
    let relations = relations(conn, tables).await?;
    for (i, relation) in relations.iter().enumerate() {
        let mut tx = conn
            .begin()
            .await
            .context(|| "opening a freeze transaction".into())?;
        crate::engine::pg::set_lock_timeout(&mut tx, lock_timeout).await?;
        create_trigger(&mut tx, schema, i, relation, lock_timeout).await?;
        tx.commit()
            .await
            .context(|| format!("committing the freeze of {relation}"))?;
    }
    let (function, _, _) = function_state(conn, schema).await?.ok_or_else(lost)?;
    Ok(Frozen {
        function,
        deadline,
        relations: relations.len(),
    })
}

/// The freeze function's oid, the source's clock (seconds since the epoch) and how many enabled
/// triggers call the function; `None` without a freeze.
async fn function_state(
    conn: &mut PgConnection,
    schema: &str,
) -> EngineResult<Option<(u32, f64, i64)>> {
    let row: Option<(sqlx::postgres::types::Oid, f64, i64)> = sqlx::query_as(
        "SELECT p.oid, pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()),
                (SELECT count(*) FROM pg_catalog.pg_trigger t
                  WHERE t.tgfoid = p.oid AND t.tgenabled <> 'D')
           FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = $1 AND p.proname = 'cutover_freeze'",
    )
    .bind(schema)
    .fetch_optional(conn)
    .await
    .context(|| "reading the freeze on the source".into())?;
    Ok(row.map(|(oid, now, triggers)| (oid.0, now, triggers)))
}

fn lost() -> EngineError {
    EngineError::invalid(
        "freeze_lost",
        "the freeze on the source was lifted or changed while the cutover ran (a trigger disabled or dropped, or the freeze lifted by hand): writes may have gone through, so the cutover stops",
    )
}

/// Marks the permanent freeze (the function's comment): the cutover's decision, which nothing
/// but removing the migration with `unfreeze_source` takes back.
const PERMANENT: &str = "pgshift: moved";

/// The finish: turns the cutover's freeze into the permanent one (no deadline, the message
/// naming the new server) in place, without touching the triggers or their locks. This commit
/// is the cutover's decision. Refused when the freeze is not the one [`freeze`] made (a trigger
/// dropped or disabled, a partition created since), when anything was captured after the
/// drain's `final_tick` (a write got past the freeze, or a partition appeared: it would never
/// reach the target), or when its deadline has passed (writes went through) or is too close to
/// be sure none will before the replacement commits.
pub async fn make_permanent(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[TableSpec],
    frozen: &Frozen,
    message: &str,
    final_tick: i64,
) -> EngineResult<()> {
    let expired = || {
        EngineError::invalid(
            "freeze_limit",
            "the freeze reached its limit (freeze_limit_seconds) before the cutover could finish; the source takes writes again",
        )
    };
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening the finish transaction on the source".into())?;
    let (function, now, triggers) = function_state(&mut tx, schema).await?.ok_or_else(lost)?;
    if function != frozen.function || (triggers as usize) < frozen.relations {
        return Err(lost());
    }
    if relations(&mut tx, tables).await?.len() != frozen.relations {
        return Err(EngineError::invalid(
            "freeze_lost",
            "a partition was created or removed while the cutover ran: it is not frozen the same way, so the cutover stops (try again)",
        ));
    }
    if now + FINISH_MARGIN_SECONDS >= frozen.deadline {
        return Err(expired());
    }
    create_function(&mut tx, schema, message, MOVED_HINT, None).await?;
    // Holding the function now: a write that got past the freeze before this point (a trigger
    // disabled and enabled again by the table's owner) was captured after the final tick.
    let q = quote_ident(schema);
    let past: bool = sqlx::query_scalar(&format!(
        "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {q}.event_id_seq)
                > (SELECT tick_event_seq FROM {q}.tick WHERE tick_id = $1)"
    ))
    .bind(final_tick)
    .fetch_one(&mut *tx)
    .await
    .context(|| "looking for changes captured after the drain".into())?;
    if past {
        return Err(EngineError::invalid(
            "writes_past_freeze",
            "a change to a migrated table was captured after the drain (a freeze trigger disabled meanwhile, or a partition created): the cutover stops and the change replicates as usual",
        ));
    }
    sqlx::query(&format!(
        "COMMENT ON FUNCTION {q}.cutover_freeze() IS {}",
        quote_literal(PERMANENT)
    ))
    .execute(&mut *tx)
    .await
    .context(|| "marking the freeze permanent".into())?;
    tx.commit()
        .await
        .context(|| "committing the permanent freeze".into())?;
    // Every statement that fired the old function did so before this moment, still inside its
    // deadline, and was refused.
    let (_, now, _) = function_state(conn, schema).await?.ok_or_else(lost)?;
    if now >= frozen.deadline {
        return Err(expired());
    }
    Ok(())
}

/// The key of the advisory lock a cutover holds on the source for as long as it runs: pgshift
/// lifts a freeze it finds on a running migration's source only when no cutover holds it.
fn cutover_lock_key(schema: &str) -> String {
    format!("pgshift cutover {schema}")
}

/// Takes the cutover's lock for the life of `conn`; refused while another cutover (of another
/// pgshift process) holds it.
pub async fn hold_cutover_lock(conn: &mut PgConnection, schema: &str) -> EngineResult<()> {
    let taken: bool =
        sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext($1))")
            .bind(cutover_lock_key(schema))
            .fetch_one(conn)
            .await
            .context(|| "taking the cutover's lock on the source".into())?;
    if !taken {
        return Err(EngineError::invalid(
            "operation_running",
            "another pgshift process is cutting this migration over",
        ));
    }
    Ok(())
}

/// Whether a cutover (of any pgshift process) holds the migration's cutover lock now. Probed
/// with a transaction-scoped lock, released again when the probe commits.
pub async fn cutover_running(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening a transaction on the source".into())?;
    let free: bool =
        sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext($1))")
            .bind(cutover_lock_key(schema))
            .fetch_one(&mut *tx)
            .await
            .context(|| "looking for a running cutover".into())?;
    tx.commit()
        .await
        .context(|| "ending the look for a running cutover".into())?;
    Ok(!free)
}

/// Lifts a freeze no cutover holds (one a stopped cutover could not lift, or a crash left):
/// `Some(lifted)`, or `None` while a cutover runs. Waits at most a few seconds for the tables'
/// locks, so the application never queues behind pgshift.
pub async fn lift_left(conn: &mut PgConnection, schema: &str) -> EngineResult<Option<bool>> {
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening a transaction on the source".into())?;
    let free: bool =
        sqlx::query_scalar("SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext($1))")
            .bind(cutover_lock_key(schema))
            .fetch_one(&mut *tx)
            .await
            .context(|| "looking for a running cutover".into())?;
    if !free {
        return Ok(None);
    }
    if is_permanent(&mut tx, schema).await? {
        // A finished cutover's freeze: not left behind, and never lifted here.
        return Ok(Some(false));
    }
    crate::engine::pg::set_lock_timeout(&mut tx, Duration::from_secs(5)).await?;
    let lifted = unfreeze(&mut tx, schema).await?;
    tx.commit()
        .await
        .context(|| "committing the lift of the freeze".into())?;
    Ok(Some(lifted))
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

/// Whether the freeze in `schema` is a finished cutover's permanent one.
pub async fn is_permanent(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                         WHERE n.nspname = $1 AND p.proname = 'cutover_freeze'
                           AND pg_catalog.obj_description(p.oid, 'pg_proc') = $2)",
    )
    .bind(schema)
    .bind(PERMANENT)
    .fetch_one(conn)
    .await
    .context(|| "looking for a permanent freeze on the source".into())
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
