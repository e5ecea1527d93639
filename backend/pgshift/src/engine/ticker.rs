//! Engine layer: the ticker: takes ticks on the source often enough for sub-second lag under load,
//! backs off when idle, rotates the three event tables and truncates the one the worker is past.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{PgConnection, Row};
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::error::Context;
use super::rotation;
use super::status::StatusHandle;
use super::target::AppliedTick;
use super::{quote_ident, EngineResult};

/// A tick as read from the source.
#[derive(Debug, Clone)]
pub struct SourceTick {
    pub tick_id: i64,
    pub snapshot: String,
    pub tick_time: DateTime<Utc>,
    pub event_seq: i64,
}

/// The columns every read of a tick row selects, in [`SourceTick::from_row`]'s order.
pub const TICK_COLUMNS: &str = "tick_id, tick_snapshot::text, tick_time, tick_event_seq";

impl SourceTick {
    /// A tick from a row selecting [`TICK_COLUMNS`].
    pub fn from_row(row: &PgRow) -> Self {
        Self {
            tick_id: row.get(0),
            snapshot: row.get(1),
            tick_time: row.get(2),
            event_seq: row.get(3),
        }
    }
}

/// The oldest tick on the source: the one taken when capture was installed, where a new
/// target's bookkeeping starts.
pub async fn first_tick(src: &mut PgConnection, schema: &str) -> EngineResult<SourceTick> {
    let row = sqlx::query(&format!(
        "SELECT {TICK_COLUMNS} FROM {}.tick ORDER BY tick_id LIMIT 1",
        quote_ident(schema)
    ))
    .fetch_one(src)
    .await
    .context(|| "reading the first tick".into())?;
    Ok(SourceTick::from_row(&row))
}

/// Timing of ticks and queue rotation.
#[derive(Debug, Clone)]
pub struct TickerSettings {
    /// Poll and tick this often while events arrive.
    pub busy_interval: Duration,
    /// Poll at most this rarely when idle; a tick is taken at least this often, so lag figures
    /// stay fresh.
    pub idle_interval: Duration,
    /// Switch to the next event table this often (when the worker has freed it).
    pub rotation_interval: Duration,
}

impl Default for TickerSettings {
    fn default() -> Self {
        Self {
            busy_interval: Duration::from_millis(100),
            idle_interval: Duration::from_secs(1),
            rotation_interval: Duration::from_secs(30),
        }
    }
}

pub struct Ticker {
    pub pool: PgPool,
    pub schema: String,
    pub settings: TickerSettings,
    pub applied: watch::Receiver<Option<AppliedTick>>,
    pub status: StatusHandle,
    /// Asks for a tick now (the copy waits for the worker to pass its chunk's snapshot).
    pub tick_now: Arc<Notify>,
    /// Told after every tick, so the worker starts on a new batch at once instead of polling.
    pub ticked: Arc<Notify>,
}

impl Ticker {
    pub async fn run(mut self, cancel: CancellationToken) -> EngineResult<()> {
        let schema = quote_ident(&self.schema);
        let seq_sql = format!(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END, clock_timestamp() FROM {schema}.event_id_seq"
        );
        let tick_sql = format!("SELECT {schema}.tick()");
        let mut last_seq: Option<i64> = None;
        let mut last_tick = Instant::now() - self.settings.idle_interval;
        let mut last_maintenance = Instant::now();
        let mut last_rotation = Instant::now();
        let mut interval = self.settings.busy_interval;
        loop {
            let requested = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => false,
                _ = self.tick_now.notified() => true,
            };
            let (seq, now): (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(&seq_sql)
                .fetch_one(&self.pool)
                .await
                .context(|| "reading the event counter".into())?;
            let busy = last_seq != Some(seq);
            if busy || requested || last_tick.elapsed() >= self.settings.idle_interval {
                let tick_id: i64 = sqlx::query_scalar(&tick_sql)
                    .fetch_one(&self.pool)
                    .await
                    .context(|| "taking a tick".into())?;
                last_tick = Instant::now();
                last_seq = Some(seq);
                self.ticked.notify_one();
                self.status.update(|s| s.last_tick = Some(tick_id));
            }
            self.report_lag(seq, now);
            // Back off while nothing happens, snap back as soon as events arrive.
            interval = if busy {
                self.settings.busy_interval
            } else {
                (interval * 2).min(self.settings.idle_interval)
            };
            if last_maintenance.elapsed() >= Duration::from_secs(1) {
                last_maintenance = Instant::now();
                let applied = self.applied.borrow_and_update().clone();
                if let Some(applied) = applied {
                    self.maintain(&applied, &mut last_rotation).await?;
                }
            }
        }
    }

    /// Pending events and lag, both in the source's own clock and counters.
    fn report_lag(&self, seq: i64, now: chrono::DateTime<chrono::Utc>) {
        let Some(applied) = self.applied.borrow().clone() else {
            return;
        };
        let pending = (seq - applied.tick_event_seq).max(0);
        let lag = if pending > 0 {
            (now - applied.tick_time).num_milliseconds().max(0) as f64 / 1000.0
        } else {
            0.0
        };
        self.status.update(|s| {
            s.pending_events = Some(pending);
            s.lag_seconds = Some(lag);
        });
    }

    /// Frees event tables the worker is past, rotates when due, and forgets old ticks.
    async fn maintain(
        &self,
        applied: &AppliedTick,
        last_rotation: &mut Instant,
    ) -> EngineResult<()> {
        let schema = quote_ident(&self.schema);
        sqlx::query(&format!("DELETE FROM {schema}.tick WHERE tick_id < $1"))
            .bind(applied.tick_id)
            .execute(&self.pool)
            .await
            .context(|| "removing old ticks".into())?;
        rotation::free_event_tables(&self.pool, &self.schema, &applied.snapshot).await?;
        if last_rotation.elapsed() >= self.settings.rotation_interval
            && rotation::rotate(&self.pool, &self.schema).await?.is_some()
        {
            *last_rotation = Instant::now();
        }
        Ok(())
    }
}
