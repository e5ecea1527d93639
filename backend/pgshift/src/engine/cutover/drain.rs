//! Engine layer (cutover): the drain: a final tick on the frozen source, then waiting until the
//! target has applied it. The freeze waited for every writer of the migrated tables, so that tick's
//! snapshot sees every change they made: once the target applied it, it holds all of them.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::engine::error::Context;
use crate::engine::{quote_ident, EngineError, EngineResult};

/// Takes a tick now and returns its id. Tick ids are `max + 1`, so a tick taken beside the
/// ticker's could collide and fail one of the two: the tick table is locked for the moment of
/// the insert (the ticker's next insert waits, then sees this tick), and a collision that
/// happens anyway is simply tried again.
pub async fn final_tick(src: &mut PgConnection, schema: &str) -> EngineResult<i64> {
    let schema = quote_ident(schema);
    let lock = format!("LOCK TABLE {schema}.tick IN SHARE ROW EXCLUSIVE MODE");
    let tick = format!("SELECT {schema}.tick()");
    let mut attempts = 0;
    loop {
        let attempt = async {
            let mut tx = src.begin().await?;
            sqlx::query(&lock).execute(&mut *tx).await?;
            let id: i64 = sqlx::query_scalar(&tick).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok::<i64, sqlx::Error>(id)
        };
        match attempt.await {
            Ok(id) => return Ok(id),
            Err(sqlx::Error::Database(db))
                if db.code().as_deref() == Some("23505") && attempts < 20 =>
            {
                attempts += 1;
            }
            Err(e) => {
                return Err(EngineError::Database {
                    context: "taking a tick on the source".into(),
                    source: e,
                })
            }
        }
    }
}

/// The tick the target has applied.
pub async fn applied_tick(dst: &mut PgConnection, schema: &str) -> EngineResult<i64> {
    sqlx::query_scalar(&format!(
        "SELECT tick_id FROM {}.applied",
        quote_ident(schema)
    ))
    .fetch_one(dst)
    .await
    .context(|| "reading the applied tick on the target".into())
}

/// Waits until the target has applied `tick`, polling every few milliseconds, for at most
/// `timeout`. Returns how long it took.
pub async fn wait_applied(
    dst: &mut PgConnection,
    schema: &str,
    tick: i64,
    timeout: Duration,
    cancel: &CancellationToken,
) -> EngineResult<Duration> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let applied = applied_tick(&mut *dst, schema).await?;
        if applied >= tick {
            return Ok(started.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(EngineError::invalid(
                "drain_timeout",
                format!(
                    "the target had not applied tick {tick} after {:.1} s (it is at tick {applied})",
                    timeout.as_secs_f64()
                ),
            ));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(EngineError::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
}
