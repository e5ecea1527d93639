//! The three event tables on the source, PgQ style: one takes new events, the others wait until
//! the worker is past them and are then emptied with TRUNCATE. The ticker decides when; these
//! steps say how, each on its own, so tests can drive them one by one.

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::error::Context;
use super::{quote_ident, EngineResult};

/// `xmin` of a `txid_snapshot` text ("xmin:xmax:xip,...").
fn snapshot_xmin(snapshot: &str) -> Option<i64> {
    snapshot.split(':').next()?.parse().ok()
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

/// Empties every retired event table the worker is past, given the snapshot of the tick the
/// target has applied. Returns the event tables it truncated.
pub async fn free_event_tables(
    pool: &PgPool,
    schema: &str,
    applied_snapshot: &str,
) -> EngineResult<Vec<i16>> {
    let Some(applied_xmin) = snapshot_xmin(applied_snapshot) else {
        return Ok(Vec::new());
    };
    let current = current_event_table(pool, schema).await?;
    let quoted = quote_ident(schema);
    let rows = sqlx::query(&format!(
        "SELECT gen, retired_xmax, truncated FROM {quoted}.generation ORDER BY gen"
    ))
    .fetch_all(pool)
    .await
    .context(|| "reading event tables".into())?;
    let mut freed = Vec::new();
    for row in &rows {
        let gen: i16 = row.get(0);
        let retired_xmax: Option<i64> = row.get(1);
        let truncated: bool = row.get(2);
        if gen == current {
            continue;
        }
        match (truncated, retired_xmax) {
            // Every transaction that could have written this table is applied: empty it.
            (false, Some(xmax)) if applied_xmin >= xmax => {
                if truncate(pool, schema, gen).await? {
                    freed.push(gen);
                }
            }
            // A rotation that did not record its snapshot (crash between the switch and the
            // commit): retire it now, which is later than the real switch and therefore safe.
            (false, None) => {
                sqlx::query(&format!(
                    "UPDATE {quoted}.generation SET retired_xmax = txid_snapshot_xmax(txid_current_snapshot()),
                            retired_at = now() WHERE gen = $1"
                ))
                .bind(gen)
                .execute(pool)
                .await
                .context(|| "retiring an event table".into())?;
            }
            _ => {}
        }
    }
    Ok(freed)
}

async fn truncate(pool: &PgPool, schema: &str, gen: i16) -> EngineResult<bool> {
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
    if let Err(err) = sqlx::query(&format!("TRUNCATE {quoted}.event_{gen}"))
        .execute(&mut *tx)
        .await
    {
        tracing::debug!(schema, gen, error = %err, "event table busy; truncating later");
        return Ok(false);
    }
    sqlx::query(&format!(
        "UPDATE {quoted}.generation SET truncated = true, retired_xmax = NULL WHERE gen = $1"
    ))
    .bind(gen)
    .execute(&mut *tx)
    .await
    .context(|| "recording a truncated event table".into())?;
    tx.commit()
        .await
        .context(|| "committing an event table truncate".into())?;
    Ok(true)
}

/// Switches new events to the next event table if that one is free (truncated). Returns the
/// new current event table, or `None` when the next one still holds events.
pub async fn rotate(pool: &PgPool, schema: &str) -> EngineResult<Option<i16>> {
    let current = current_event_table(pool, schema).await?;
    let next = (current + 1) % 3;
    let quoted = quote_ident(schema);
    let next_free: bool = sqlx::query_scalar(&format!(
        "SELECT truncated FROM {quoted}.generation WHERE gen = $1"
    ))
    .bind(next)
    .fetch_one(pool)
    .await
    .context(|| "reading the next event table".into())?;
    if !next_free {
        return Ok(None);
    }
    let mut tx = pool
        .begin()
        .await
        .context(|| "opening a transaction".into())?;
    sqlx::query(&format!(
        "UPDATE {quoted}.generation SET truncated = false WHERE gen = $1"
    ))
    .bind(next)
    .execute(&mut *tx)
    .await
    .context(|| "preparing the next event table".into())?;
    // The switch is seen by every session at once (sequences are not transactional); the
    // snapshot taken after it bounds every transaction that may still have written the old table.
    sqlx::query(&format!(
        "SELECT setval('{quoted}.generation_seq', (SELECT last_value FROM {quoted}.generation_seq) + 1, true)"
    ))
    .execute(&mut *tx)
    .await
    .context(|| "switching event tables".into())?;
    sqlx::query(&format!(
        "UPDATE {quoted}.generation SET retired_xmax = txid_snapshot_xmax(txid_current_snapshot()), retired_at = now()
          WHERE gen = $1"
    ))
    .bind(current)
    .execute(&mut *tx)
    .await
    .context(|| "retiring the old event table".into())?;
    tx.commit()
        .await
        .context(|| "committing a rotation".into())?;
    tracing::debug!(schema, from = current, to = next, "rotated event tables");
    Ok(Some(next))
}
