//! The heartbeat: a row inserted on the source every 100 ms, and a poller on the target that
//! records how old each row is when it shows up there. Replication lag measured the same way
//! whatever replicates the rows (used by `bench-engine` and `bench-compare`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::{Ctx, R};

const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
const HEARTBEAT_POLL_EVERY: Duration = Duration::from_millis(20);

#[derive(Default)]
pub struct Heartbeats {
    pub count: u64,
    pub max_id: i64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// A heartbeat seen on the target: id, its `at`, and milliseconds from `at` to being seen.
pub type Seen = (i64, DateTime<Utc>, f64);

/// Inserts a heartbeat row every 100 ms until `stop`.
pub fn spawn_heartbeat(dsn: String, stop: CancellationToken) -> JoinHandle<R<Heartbeats>> {
    tokio::spawn(async move {
        let pool = pool(&dsn, 1).await?;
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hb = Heartbeats::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match sqlx::query_scalar::<_, i64>(
                "INSERT INTO public.heartbeat DEFAULT VALUES RETURNING id",
            )
            .fetch_one(&pool)
            .await
            {
                Ok(id) => {
                    hb.count += 1;
                    hb.max_id = hb.max_id.max(id);
                }
                Err(e) => {
                    hb.errors += 1;
                    hb.last_error = Some(e.to_string());
                }
            }
        }
        pool.close().await;
        Ok(hb)
    })
}

/// Polls the target for new heartbeats every 20 ms; per id, milliseconds from its insert on
/// the source to the poll that saw it (with its `at`). Ends once it has seen `final_id` (set
/// when the heartbeat stops; -1 before).
pub fn spawn_heartbeat_poller(
    dsn: String,
    after: i64,
    final_id: Arc<AtomicI64>,
) -> JoinHandle<R<Vec<Seen>>> {
    tokio::spawn(async move {
        let pool = pool(&dsn, 1).await?;
        let mut tick = tokio::time::interval(HEARTBEAT_POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = after;
        let mut seen = Vec::new();
        let mut deadline: Option<Instant> = None;
        loop {
            tick.tick().await;
            let fin = final_id.load(Ordering::SeqCst);
            if fin >= 0 {
                if last >= fin {
                    break;
                }
                let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(120));
                if Instant::now() > d {
                    pool.close().await;
                    return Err(format!(
                        "heartbeat {fin} never reached the target (last seen: {last})"
                    ));
                }
            }
            let rows: Vec<(i64, DateTime<Utc>)> =
                sqlx::query_as("SELECT id, at FROM public.heartbeat WHERE id > $1 ORDER BY id")
                    .bind(last)
                    .fetch_all(&pool)
                    .await
                    .ctx(|| "polling heartbeat on the target".into())?;
            let now = Utc::now();
            for (id, at) in rows {
                let ms = (now - at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
                seen.push((id, at, ms));
                last = id;
            }
        }
        pool.close().await;
        Ok(seen)
    })
}

async fn pool(dsn: &str, max: u32) -> R<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(60))
        .connect(dsn)
        .await
        .ctx(|| format!("connecting to {dsn}"))
}
