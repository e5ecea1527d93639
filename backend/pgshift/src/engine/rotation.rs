//! Engine layer: the three event tables on the source, PgQ style: one takes new events, the others
//! wait until the worker is past them and are then emptied with TRUNCATE. The ticker decides when;
//! these steps say how, each on its own, so tests can drive them one by one.
//!
//! # Why no event is truncated before it is applied
//!
//! The rule: event table `g` is truncated only once the applied tick's snapshot has
//! `xmin >= bound(g)`, where `bound(g)` is a txid *assigned after the switch away from `g`*, in
//! a transaction of its own (PgQ's rotation step 2). Why that is enough:
//!
//! 1. A capture trigger runs AFTER its statement wrote a row (or truncated a table), so its
//!    transaction already holds its txid; only then does it read `generation_seq` and write
//!    `event_<last_value % 3>` with `ev_txid = txid_current()`, that same txid.
//! 2. `generation_seq` is not transactional: [`rotate`]'s `setval` is seen by every read that
//!    starts after it returns. A writer that chose `g` read the sequence while `g` was current,
//!    before the switch that ended that turn of `g`, and its txid is older still.
//! 3. [`bound_retired_tables`] reads the sequence, sees the switch, and only then takes its own
//!    txid, in a statement that starts after that read. Txids are handed out in increasing
//!    order, so every transaction that wrote `g` has a txid below the bound. The latest
//!    *completed* txid (`txid_snapshot_xmax`), which this once used, is no such bound: a
//!    writer that is still running may hold a higher txid than any completed one.
//! 4. Every txid below a snapshot's `xmin` had finished when the snapshot was taken, so it is
//!    visible in it, and the worker has applied every transaction visible in the applied tick
//!    (batches are cut by that same visibility). A transaction below the bound that was still
//!    running at the applied tick has a txid `>= xmin`, so `xmin >= bound` excludes that case.
//! 5. A writer that chose `g` during an earlier turn of `g` had finished before that turn's
//!    truncate (same rule), so every event in `g` at a truncate belongs to the turn that ends.
//!
//! Each step commits on its own and leaves a state the next round completes safely, so a ticker
//! killed or cancelled anywhere loses nothing: a next table prepared but never switched to is
//! bounded and emptied like a retired one (it holds no events); a switch whose bound was never
//! recorded is bounded by the next [`free_event_tables`], whose txid also comes after the switch
//! (later than needed, never earlier); a current table still marked free (left by older
//! versions, whose rotation transaction could roll back after its `setval`) is marked in use.

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::error::Context;
use super::{quote_ident, quote_literal, EngineError, EngineResult};

/// `xmin` of a `txid_snapshot` text ("xmin:xmax:xip,...").
fn snapshot_xmin(snapshot: &str) -> EngineResult<i64> {
    snapshot
        .split(':')
        .next()
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| {
            EngineError::invalid(
                "corrupt_snapshot",
                format!("unreadable txid snapshot {snapshot:?}"),
            )
        })
}

/// The event table that takes new events now (0, 1 or 2).
pub async fn current_event_table(pool: &PgPool, schema: &str) -> EngineResult<i16> {
    let schema = quote_ident(schema);
    sqlx::query_scalar(&format!(
        "SELECT (last_value % 3)::smallint FROM {schema}.generation_seq"
    ))
    .fetch_one(pool)
    .await
    .context(|| "reading the current event table".into())
}

/// Switches new events to the next event table if that one is free (truncated), then records
/// the old table's bound. Returns the new current event table, or `None` when the next one
/// still holds events.
pub async fn rotate(pool: &PgPool, schema: &str) -> EngineResult<Option<i16>> {
    let current = current_event_table(pool, schema).await?;
    let next = (current + 1) % 3;
    let quoted = quote_ident(schema);
    // Committed before the switch, so the table taking events is never marked free.
    let prepared = sqlx::query(&format!(
        "UPDATE {quoted}.generation SET truncated = false, retired_xmax = NULL, retired_at = NULL
          WHERE gen = $1 AND truncated"
    ))
    .bind(next)
    .execute(pool)
    .await
    .context(|| "preparing the next event table".into())?
    .rows_affected();
    if prepared == 0 {
        return Ok(None);
    }
    // Not transactional: every capture trigger that reads the sequence after this returns
    // writes the next table.
    let sequence = quote_literal(&format!("{quoted}.generation_seq"));
    let switched = sqlx::query(&format!(
        "SELECT setval({sequence}, last_value + 1, true)
           FROM {quoted}.generation_seq WHERE last_value % 3 = $1"
    ))
    .bind(current)
    .fetch_optional(pool)
    .await
    .context(|| "switching event tables".into())?;
    if switched.is_none() {
        return Ok(None);
    }
    // A transaction of its own, begun after the switch (step 2 of PgQ's rotation).
    bound_retired_tables(pool, schema).await?;
    tracing::debug!(schema, from = current, to = next, "rotated event tables");
    Ok(Some(next))
}

/// Records a bound for every retired event table that has none yet: a txid assigned after the
/// switch away from it, so every transaction that wrote it has a lower txid (see the module
/// notes). The second step of [`rotate`], and the recovery of a rotation interrupted before it.
/// Returns the event tables bounded, with their bounds.
pub async fn bound_retired_tables(pool: &PgPool, schema: &str) -> EngineResult<Vec<(i16, i64)>> {
    let quoted = quote_ident(schema);
    let mut tx = pool
        .begin()
        .await
        .context(|| "opening a transaction".into())?;
    // Reading the sequence assigns no txid: the txid this transaction gets in the UPDATE below
    // is assigned after this read, so after every switch the read sees.
    let current: i16 = sqlx::query_scalar(&format!(
        "SELECT (last_value % 3)::smallint FROM {quoted}.generation_seq"
    ))
    .fetch_one(&mut *tx)
    .await
    .context(|| "reading the current event table".into())?;
    let rows = sqlx::query(&format!(
        "UPDATE {quoted}.generation SET retired_xmax = txid_current(), retired_at = now()
          WHERE gen <> $1 AND NOT truncated AND retired_xmax IS NULL
          RETURNING gen, retired_xmax"
    ))
    .bind(current)
    .fetch_all(&mut *tx)
    .await
    .context(|| "recording the bound of a retired event table".into())?;
    tx.commit()
        .await
        .context(|| "committing the bound of a retired event table".into())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Empties every retired event table the worker is past, given the snapshot of the tick the
/// target has applied, after completing whatever an interrupted rotation left undone. Returns
/// the event tables it truncated.
pub async fn free_event_tables(
    pool: &PgPool,
    schema: &str,
    applied_snapshot: &str,
) -> EngineResult<Vec<i16>> {
    let applied_xmin = snapshot_xmin(applied_snapshot)?;
    let current = current_event_table(pool, schema).await?;
    let quoted = quote_ident(schema);
    let rows = sqlx::query(&format!(
        "SELECT gen, retired_xmax, truncated FROM {quoted}.generation ORDER BY gen"
    ))
    .fetch_all(pool)
    .await
    .context(|| "reading event tables".into())?;
    let mut unbounded = false;
    let mut due = Vec::new();
    for row in &rows {
        let gen: i16 = row.get(0);
        let bound: Option<i64> = row.get(1);
        let truncated: bool = row.get(2);
        if gen == current {
            if truncated {
                sqlx::query(&format!(
                    "UPDATE {quoted}.generation SET truncated = false, retired_xmax = NULL WHERE gen = $1"
                ))
                .bind(gen)
                .execute(pool)
                .await
                .context(|| "marking the current event table in use".into())?;
            }
            continue;
        }
        match (truncated, bound) {
            (false, None) => unbounded = true,
            // Every transaction below the bound is visible in the applied tick, so applied.
            (false, Some(bound)) if applied_xmin >= bound => due.push((gen, bound)),
            _ => {}
        }
    }
    if unbounded {
        bound_retired_tables(pool, schema).await?;
    }
    let mut freed = Vec::new();
    for (gen, bound) in due {
        if truncate(pool, schema, gen, bound).await? {
            freed.push(gen);
        }
    }
    Ok(freed)
}

/// Truncates event table `gen` if it is still retired with `bound` and not current.
async fn truncate(pool: &PgPool, schema: &str, gen: i16, bound: i64) -> EngineResult<bool> {
    let quoted = quote_ident(schema);
    let mut tx = pool
        .begin()
        .await
        .context(|| "opening a transaction".into())?;
    // The worker's open batch cursor holds a lock on the table; try again next round rather
    // than queueing behind it: while TRUNCATE waits for its lock, the worker's next batch
    // read waits behind TRUNCATE and this ticker does not tick, so the wait stays short.
    sqlx::query("SET LOCAL lock_timeout = '200ms'")
        .execute(&mut *tx)
        .await
        .context(|| "lock_timeout".into())?;
    let marked = sqlx::query(&format!(
        "UPDATE {quoted}.generation SET truncated = true, retired_xmax = NULL
          WHERE gen = $1 AND retired_xmax = $2 AND NOT truncated
            AND gen <> (SELECT last_value % 3 FROM {quoted}.generation_seq)"
    ))
    .bind(gen)
    .bind(bound)
    .execute(&mut *tx)
    .await
    .context(|| "recording a truncated event table".into())?
    .rows_affected();
    if marked == 0 {
        return Ok(false);
    }
    if let Err(err) = sqlx::query(&format!("TRUNCATE {quoted}.event_{gen}"))
        .execute(&mut *tx)
        .await
    {
        tracing::debug!(schema, gen, error = %err, "event table busy; truncating later");
        return Ok(false);
    }
    tx.commit()
        .await
        .context(|| "committing an event table truncate".into())?;
    Ok(true)
}
