//! The drain: a final tick on the frozen source, then waiting until the target has applied it.
//! The freeze waited for every writer of the migrated tables, so that tick's snapshot sees every
//! change they made: once the target applied it, it holds all of them.

use std::time::{Duration, Instant};

use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::engine::error::Context;
use crate::engine::{quote_ident, EngineError, EngineResult};

/// Takes a tick now and returns its id. The ticker may take one at the same moment (tick ids are
/// `max + 1`): the loser of that race gets a unique violation and simply tries again.
pub async fn final_tick(src: &mut PgConnection, schema: &str) -> EngineResult<i64> {
    let sql = format!("SELECT {}.tick()", quote_ident(schema));
    let mut attempts = 0;
    loop {
        match sqlx::query_scalar(&sql).fetch_one(&mut *src).await {
            Ok(id) => return Ok(id),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") && attempts < 20 => {
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
    sqlx::query_scalar(&format!("SELECT tick_id FROM {}.applied", quote_ident(schema)))
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
