//! What runs beside a measurement and samples it: the heartbeat and its poller on the target
//! (in `heartbeat`, shared with `bench-compare`), pgshift's status, the wait events of pgbench's backends, this process's RSS, and the CPU
//! used by each part.

use std::time::{Duration, Instant};

use sqlx::postgres::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bench::Bench;
use crate::common;
pub use crate::heartbeat::{spawn_heartbeat, spawn_heartbeat_poller, Seen};

/// Samples of pgshift's own figures during a run.
#[derive(Default)]
pub struct StatusSamples {
    pub lag_seconds: Vec<f64>,
    pub max_pending: i64,
    pub states: Vec<String>,
}

/// CPU seconds used so far by each part.
pub struct Cpu {
    at: Instant,
    source: f64,
    target: f64,
    /// This process: pgshift and the benchmark's own tasks.
    own: f64,
    /// This process's waited-for children: pgbench.
    children: f64,
}

/// CPU used between two [`Cpu`] snapshots, in cores (CPU seconds per second).
pub struct CpuUse {
    wall: f64,
    source: f64,
    target: f64,
    own: f64,
    children: f64,
}

impl CpuUse {
    pub fn between(a: &Cpu, b: &Cpu) -> Self {
        let wall = (b.at - a.at).as_secs_f64().max(1e-9);
        Self {
            wall,
            source: (b.source - a.source) / wall,
            target: (b.target - a.target) / wall,
            own: (b.own - a.own) / wall,
            children: (b.children - a.children) / wall,
        }
    }

    pub fn row(&self, label: &str) -> String {
        format!(
            "| {label} | {:.1} s | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            self.wall,
            self.source,
            self.target,
            self.own,
            self.children,
            self.source + self.target + self.own + self.children
        )
    }
}

pub const CPU_TABLE_HEAD: &str = "| Run | wall | source PostgreSQL | target PostgreSQL | pgshift (this process) | pgbench | total |\n|---|---|---|---|---|---|---|";

impl Bench {
    pub fn cpu(&self) -> Cpu {
        let (own, children) = common::own_cpu();
        Cpu {
            at: Instant::now(),
            source: common::cluster_cpu(self.source.data_dir(), self.source.postmaster_pid()),
            target: common::cluster_cpu(self.target.data_dir(), self.target.postmaster_pid()),
            own,
            children,
        }
    }

    /// pgshift's lag and pending events every 250 ms until `stop`.
    pub async fn sample_status(&self, stop: CancellationToken) -> StatusSamples {
        let mut s = StatusSamples::default();
        loop {
            if let Ok(m) = self.status().await {
                if let Some(l) = m["lag_seconds"].as_f64() {
                    s.lag_seconds.push(l);
                }
                s.max_pending = s.max_pending.max(m["pending_events"].as_i64().unwrap_or(0));
                s.states
                    .push(m["state"].as_str().unwrap_or("?").to_string());
            }
            tokio::select! {
                _ = stop.cancelled() => return s,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}

/// Samples the states and wait events of pgbench's backends on `db` every 100 ms until
/// `stop`; returns each \"state: wait\" with its share of the samples, most frequent first.
pub fn spawn_wait_sampler(
    pool: PgPool,
    db: String,
    stop: CancellationToken,
) -> JoinHandle<Vec<(String, f64)>> {
    tokio::spawn(async move {
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        let mut total = 0u64;
        loop {
            let rows: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity
                  WHERE datname = $1 AND application_name = 'pgbench' AND backend_type = 'client backend'",
            )
            .bind(&db)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            for (state, kind, event) in rows {
                let wait = match (kind, event) {
                    (Some(k), Some(e)) => format!("{k}/{e}"),
                    _ => "running (no wait)".into(),
                };
                *counts
                    .entry(format!("{}: {wait}", state.unwrap_or_else(|| "?".into())))
                    .or_default() += 1;
                total += 1;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let mut out: Vec<(String, f64)> = counts
            .into_iter()
            .map(|(k, n)| (k, n as f64 / total.max(1) as f64))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    })
}

/// The highest VmRSS seen every 100 ms until `stop`.
pub fn spawn_rss_sampler(stop: CancellationToken) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = common::rss();
        loop {
            peak = peak.max(common::rss());
            tokio::select! {
                _ = stop.cancelled() => return peak.max(common::rss()),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
}
