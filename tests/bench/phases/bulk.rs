//! Phase 5: a bulk UPDATE and a bulk DELETE on the source; time until the target has them, and
//! the memory pgshift used meanwhile.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::bench::Bench;
use crate::common::{self, mib, secs, Ctx, R};
use crate::report::Status;
use crate::samplers::spawn_rss_sampler;
use crate::{check, say};

const BULK_TIME_TARGET: Duration = Duration::from_secs(60);
const BULK_MEMORY_TARGET: u64 = 300 * 1024 * 1024;

impl Bench {
    /// A bulk UPDATE of every account, then a bulk DELETE of half of them.
    pub async fn bulk_changes(&self) -> R<()> {
        let rows = check::accounts(&self.src).await?.1;
        self.bulk(
            "Bulk UPDATE",
            "UPDATE public.pgbench_accounts SET abalance = abalance + 1",
            rows,
        )
        .await?;
        self.bulk(
            "Bulk DELETE",
            "DELETE FROM public.pgbench_accounts WHERE aid % 2 = 0",
            rows / 2,
        )
        .await
    }

    async fn bulk(&self, name: &str, sql: &str, expected_rows: i64) -> R<()> {
        self.checkpoint().await?;
        let events_before = self.status().await?["events_applied"].as_i64().unwrap_or(0);
        let reset = common::reset_peak_rss();
        let rss_before = common::rss();
        let stop = CancellationToken::new();
        let memory = spawn_rss_sampler(stop.clone());
        say!("{name}: {sql}");
        let t0 = Instant::now();
        let changed = sqlx::query(sql).execute(&self.src).await;
        let statement = t0.elapsed();
        let changed = match changed {
            Ok(r) => r.rows_affected(),
            Err(e) => {
                stop.cancel();
                return Err(format!("{sql}: {e}"));
            }
        };
        say!(
            "{name}: {changed} rows changed on the source in {}",
            secs(statement)
        );
        let src_acc = check::accounts(&self.src).await?;
        let limit = Duration::from_secs(600.max(60 * u64::from(self.args.scale)));
        let mut last_progress = Instant::now();
        let mut idle_since: Option<Instant> = None;
        let matched = loop {
            let start = Instant::now();
            let a = check::accounts(&self.dst).await?;
            if a == src_acc {
                break start;
            }
            let m = self.status().await?;
            let idle = m["state"] == "synced" && m["pending_events"].as_i64() == Some(0);
            match (idle, idle_since) {
                (true, None) => idle_since = Some(Instant::now()),
                (false, _) => idle_since = None,
                _ => {}
            }
            if idle_since.is_some_and(|i| i.elapsed() > Duration::from_secs(15)) {
                stop.cancel();
                let diffs = check::compare(&self.src, &self.dst).await?;
                self.rep().mismatch(format!(
                    "{name}: pgshift reports nothing pending for 15 s but the target differs: accounts (sum, count) source {src_acc:?} target {a:?}\n{}",
                    diffs.join("\n")
                ));
                return Err(format!("{name}: the target never matched the source"));
            }
            if t0.elapsed() > limit {
                stop.cancel();
                return Err(format!(
                    "{name}: the target did not match within {}; accounts (sum, count) source {src_acc:?} target {a:?}; status {m}",
                    secs(limit)
                ));
            }
            if last_progress.elapsed() >= Duration::from_secs(5) {
                last_progress = Instant::now();
                say!(
                    "{name}: {} in, pgshift state {} pending_events {} lag_seconds {}, rss {}",
                    secs(t0.elapsed()),
                    m["state"],
                    m["pending_events"],
                    m["lag_seconds"],
                    mib(common::rss())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        stop.cancel();
        let sampled_peak = memory.await.ctx(|| "memory sampler".into())?;
        let peak = if reset {
            sampled_peak.max(common::peak_rss())
        } else {
            sampled_peak
        };
        let growth = peak.saturating_sub(rss_before);
        let total = matched - t0;
        let replication = total.saturating_sub(statement);
        let events = self.status().await?["events_applied"].as_i64().unwrap_or(0) - events_before;
        say!(
            "{name}: target matches {} after the statement started",
            secs(total)
        );
        self.verify(name).await?;

        let mut r = self.rep();
        if changed as i64 != expected_rows {
            r.problem(format!(
                "{name} changed {changed} rows, expected {expected_rows}"
            ));
        }
        r.figure(
            &format!("5. {name} ({changed} rows): statement start → target matches"),
            format!(
                "{} (statement {}, then {})",
                secs(total),
                secs(statement),
                secs(replication)
            ),
            &format!("< {}", secs(BULK_TIME_TARGET)),
            Status::of(total < BULK_TIME_TARGET),
        );
        r.figure(
            &format!("5. {name}: peak RSS growth of the bench process"),
            mib(growth),
            &format!("< {}", mib(BULK_MEMORY_TARGET)),
            Status::of(growth < BULK_MEMORY_TARGET),
        );
        r.section(
            &format!("5. {name}"),
            format!(
                "`{sql}` on the source ({changed} rows, one transaction), then `sum(abalance), count(*)` of \
                 `pgbench_accounts` on the target polled every 100 ms until it equals the source's (time taken \
                 at the start of the poll that matched). pgshift applied {events} events for it. CHECKPOINT on \
                 both clusters before.\n\n\
                 | | |\n|---|---|\n\
                 | Statement on the source (with capture triggers) | {} |\n\
                 | Commit → target matches | {} |\n\
                 | Total | **{}** |\n\
                 | RSS before | {} |\n\
                 | Peak RSS during the phase | {} |\n\
                 | Growth | **{}** |\n\n\
                 pgshift runs inside the benchmark process, so RSS is the whole process's: pgshift plus the \
                 benchmark's own (small) buffers and its HTTP client. Peak is the larger of VmRSS sampled every \
                 100 ms and {}.\n",
                secs(statement),
                secs(replication),
                secs(total),
                mib(rss_before),
                mib(peak),
                mib(growth),
                if reset {
                    "VmHWM, reset just before the statement (`echo 5 > /proc/self/clear_refs`)"
                } else {
                    "nothing else (VmHWM could not be reset here)"
                }
            ),
        );
        Ok(())
    }
}
