//! The benchmark's state (clusters, pools, pgshift, the report), the order of the phases, and
//! what every phase uses: pgshift's status, CHECKPOINT, and the data check that ends a phase.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pgshift_tests::server::TestServer;
use pgshift_tests::PgCluster;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::PgPool;

use crate::args::{Args, Phase};
use crate::common::{secs, Ctx, R};
use crate::report::Report;
use crate::{check, say};

pub const MIGRATION: &str = "bench";

/// Fields drop in this order when a run is interrupted: pgshift first, then the pools, then the
/// clusters (pgshift would log errors about servers that vanished under it).
pub struct Bench {
    pub server: TestServer,
    /// Source `bench` (migrated).
    pub src: PgPool,
    /// Target `bench`.
    pub dst: PgPool,
    /// Source `bench_nocap`: the same data, never captured (the write-overhead baseline).
    pub nocap: PgPool,
    pub source: PgCluster,
    pub target: PgCluster,
    pub args: Args,
    pub report: Arc<Mutex<Report>>,
}

impl Bench {
    pub fn rep(&self) -> MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Setup, then the phases `--only` selected (all by default), in order.
    pub async fn phases(&self) -> R<()> {
        self.prepare().await?;
        if self.args.runs(Phase::Copy) {
            self.initial_copy().await?;
        } else {
            // The other phases measure a running, synced migration.
            self.start_unmeasured().await?;
        }
        if self.args.runs(Phase::Overhead) {
            let base_tps = self.load().await?;
            self.paused_run(base_tps).await?;
        }
        if self.args.runs(Phase::Bulk) {
            self.bulk_changes().await?;
        }
        if self.args.runs(Phase::Cutover) {
            self.cutovers().await?;
        }
        if self.args.partial() {
            say!("phases done: {}", self.args.phase_list());
        } else {
            say!("all phases done");
        }
        Ok(())
    }

    /// CHECKPOINT on both clusters.
    pub async fn checkpoint(&self) -> R<()> {
        for (name, pool) in [("source", &self.src), ("target", &self.dst)] {
            sqlx::query("CHECKPOINT")
                .execute(pool)
                .await
                .ctx(|| format!("CHECKPOINT on the {name}"))?;
        }
        Ok(())
    }

    pub async fn status(&self) -> R<Value> {
        let (code, body) = self.server.get(&format!("/migrations/{MIGRATION}")).await;
        if code != StatusCode::OK {
            return Err(format!(
                "GET /migrations/{MIGRATION} answered {code}: {body}"
            ));
        }
        if let Some(err) = body["error"].as_str() {
            self.rep().problem(format!(
                "pgshift reported an error (state {}): {err}",
                body["state"]
            ));
        }
        Ok(body)
    }

    /// Waits until the target equals the source (up to 15 s: the source is idle by now) and
    /// records the outcome; a remaining difference is a mismatch.
    pub async fn verify(&self, phase: &str) -> R<()> {
        say!("{phase}: comparing every row of the source and the target");
        let t0 = Instant::now();
        let mut diffs = check::compare(&self.src, &self.dst).await?;
        let first_compare = t0.elapsed();
        let mut retried = false;
        while !diffs.is_empty() && t0.elapsed() < Duration::from_secs(15) {
            retried = true;
            tokio::time::sleep(Duration::from_secs(1)).await;
            diffs = check::compare(&self.src, &self.dst).await?;
        }
        let took = t0.elapsed();
        let mut r = self.rep();
        if diffs.is_empty() {
            // The comparison itself takes seconds on big tables; only a retry means the phase's
            // own check declared success too early.
            if retried {
                r.problem(format!(
                    "{phase}: the target matched the source only {} after the phase's own check said it had caught up",
                    secs(took)
                ));
            }
            r.checks.push(format!(
                "{phase}: target equals source ({} to compare)",
                secs(first_compare)
            ));
            drop(r);
            say!("{phase}: target equals source");
        } else {
            r.checks.push(format!(
                "{phase}: **MISMATCH** ({} difference(s))",
                diffs.len()
            ));
            r.mismatch(format!("after {phase}:\n{}", diffs.join("\n")));
        }
        Ok(())
    }

    /// ERROR, FATAL and PANIC lines (and the context and statements logged with them) of both servers.
    pub fn collect_server_logs(&self) {
        let mut logs = Vec::new();
        for (name, cluster) in [("Source", &self.source), ("Target", &self.target)] {
            let text = std::fs::read_to_string(cluster.log_path()).unwrap_or_default();
            let mut lines = Vec::new();
            let mut after_error = false;
            for line in text.lines() {
                let is_error =
                    line.contains("ERROR:") || line.contains("FATAL:") || line.contains("PANIC:");
                // A cutover's freeze refusing writes is the freeze working, not a problem.
                let is_error = is_error && !line.contains("is frozen: pgshift migration");
                // What PostgreSQL logs with an error: where it happened (an autovacuum cancelled
                // by a lock request names its table there) and the statement.
                let follows =
                    after_error && (line.contains("CONTEXT:") || line.contains("STATEMENT:"));
                if is_error || follows {
                    lines.push(line.chars().take(500).collect());
                }
                after_error = is_error || follows;
            }
            let errors = lines
                .iter()
                .filter(|l: &&String| !l.contains("STATEMENT:") && !l.contains("CONTEXT:"))
                .count();
            if errors > 0 {
                self.rep().problem(format!(
                    "the {} server logged {errors} ERROR/FATAL/PANIC line(s) (see its log section)",
                    name.to_lowercase()
                ));
            }
            logs.push((name.to_string(), lines));
        }
        self.rep().server_logs = logs;
    }
}
