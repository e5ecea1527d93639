//! Diagnostic 2b, run with the write-overhead phase: pgbench with the migration paused, then the
//! catch-up after resuming.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::bench::{Bench, MIGRATION};
use crate::common::{secs, Ctx, R};
use crate::pgbench::{cpu_row, fmt_ms, waits_table};
use crate::report::Status;
use crate::samplers::{spawn_heartbeat, CPU_TABLE_HEAD};
use crate::say;

impl Bench {
    /// Diagnostic: the same pgbench run with the migration paused (capture triggers fire, nothing
    /// is applied), which tells the triggers' cost apart from the apply side's competition for
    /// the machine; then the time pgshift takes to apply the backlog after resuming.
    pub async fn paused_run(&self, base_tps: f64) -> R<()> {
        say!("diagnostic: pgbench with the migration paused (capture triggers only)");
        let (code, body) = self
            .server
            .post(&format!("/migrations/{MIGRATION}/pause"), json!({}))
            .await;
        if code != StatusCode::OK {
            return Err(format!("pausing the migration answered {code}: {body}"));
        }
        self.prepare_run(&self.src).await?;
        let events_before = self.status().await?["events_applied"].as_i64().unwrap_or(0);
        let schema = pgshift_tests::migrate::capture_schema(&self.src).await;
        let seq_sql = format!(
            "SELECT last_value FROM {}.event_id_seq",
            pgshift_tests::quote_ident(&schema)
        );
        let seq = || async {
            sqlx::query_scalar::<_, i64>(&seq_sql)
                .fetch_one(&self.src)
                .await
                .ctx(|| "reading the event counter".into())
        };
        let seq_before = seq().await?;
        let stop = CancellationToken::new();
        let hb = spawn_heartbeat(self.source.dsn("bench"), stop.clone());
        let run = self.pgbench("bench").await;
        stop.cancel();
        let hb = hb.await.ctx(|| "heartbeat task".into())??;
        let run = run?;
        let backlog = seq().await? - seq_before;
        say!(
            "paused: {:.1} tps; {backlog} events captured meanwhile; resuming",
            run.tps
        );
        let resumed = Instant::now();
        let (code, body) = self
            .server
            .post(&format!("/migrations/{MIGRATION}/resume"), json!({}))
            .await;
        if code != StatusCode::OK {
            return Err(format!("resuming the migration answered {code}: {body}"));
        }
        let (catch_up, _) = self.caught_up(resumed).await?;
        let synced = loop {
            let m = self.status().await?;
            if m["state"] == "synced" {
                break resumed.elapsed();
            }
            if resumed.elapsed() > Duration::from_secs(300) {
                return Err(format!(
                    "the migration is not synced 300 s after resuming: {m}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let events = self.status().await?["events_applied"].as_i64().unwrap_or(0) - events_before;
        say!(
            "caught up {} after resuming ({events} events)",
            secs(catch_up)
        );
        self.verify("paused run and catch-up").await?;

        let ratio = run.tps / base_tps;
        let mut r = self.rep();
        if hb.errors > 0 {
            r.problem(format!(
                "{} heartbeat insert(s) failed during the paused run: {}",
                hb.errors,
                hb.last_error.clone().unwrap_or_default()
            ));
        }
        r.figure(
            "2b. Diagnostic: tps with capture triggers only (apply paused) / without capture",
            format!(
                "{:.1}% ({:.1} / {:.1} tps)",
                ratio * 100.0,
                run.tps,
                base_tps
            ),
            "—",
            Status::Info,
        );
        r.figure(
            "2b. Diagnostic: catch-up after resume",
            format!(
                "{} for {events} events ({:.0} events/s)",
                secs(catch_up),
                events as f64 / catch_up.as_secs_f64()
            ),
            "—",
            Status::Info,
        );
        r.section(
            "2b. Diagnostic: capture triggers only, then catch-up",
            format!(
                "Not one of the issue's figures. The same pgbench run (after `VACUUM ANALYZE` and `CHECKPOINT`) \
                 with the migration paused: capture triggers fire on the source, but no ticker, worker or apply \
                 runs. Compared with the baseline above, it isolates the triggers' cost from the apply side's \
                 competition for this machine's CPUs.\n\n\
                 | Run | tps | latency avg | vs. without capture |\n|---|---|---|---|\n\
                 | capture triggers only (`bench`, paused) | {:.1} | {} | {:.1}% |\n\n\
                 {CPU_TABLE_HEAD}\n{}\n\n{}\n\
                 Then `POST /resume`: {backlog} events had been captured while paused; the target had every change {} after the \
                 resume (history and accounts aggregates equal, polled every 20 ms), and the migration reported \
                 `synced` after {}. pgshift applied {events} events.\n",
                run.tps,
                fmt_ms(run.latency_ms),
                ratio * 100.0,
                cpu_row("capture triggers only", &run),
                waits_table(&[("capture triggers only", &run)]),
                secs(catch_up),
                secs(synced),
            ),
        );
        Ok(())
    }
}
