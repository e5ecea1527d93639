//! Phases 2-4: pgbench throughput with and without capture, replication lag under that load
//! (from a heartbeat table), and how long the target takes to catch up once the load stops.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::bench::{Bench, MIGRATION};
use crate::common::{self, secs, Ctx, Percentiles, R};
use crate::pgbench::{cpu_row, fmt_ms, fmt_opt, waits_table};
use crate::report::Status;
use crate::samplers::{spawn_heartbeat, spawn_heartbeat_poller, Seen, CPU_TABLE_HEAD};
use crate::{check, say};

const TPS_TARGET_RATIO: f64 = 0.85;
const LAG_P99_TARGET_MS: f64 = 1000.0;
const DRAIN_TARGET: Duration = Duration::from_secs(2);

impl Bench {
    /// Returns the baseline's tps.
    pub async fn load(&self) -> R<f64> {
        // Baseline: the never-captured copy of the database, with the same heartbeat load.
        say!("write overhead: baseline run on bench_nocap (no capture)");
        self.prepare_run(&self.nocap).await?;
        let stop = CancellationToken::new();
        let hb = spawn_heartbeat(self.source.dsn("bench_nocap"), stop.clone());
        let base = self.pgbench("bench_nocap").await;
        stop.cancel();
        let base_hb = hb.await.ctx(|| "heartbeat task".into())??;
        let base = base?;
        say!("baseline: {:.1} tps", base.tps);

        // The capture run: the same on bench, which pgshift captures and applies.
        let m = self.status().await?;
        if m["state"] != "synced" {
            return Err(format!(
                "the migration is not synced before the capture run: {m}"
            ));
        }
        let events_before = m["events_applied"].as_i64().unwrap_or(0);
        say!("write overhead: capture run on bench (migration synced), heartbeat every 100 ms, target polled every 20 ms");
        self.prepare_run(&self.src).await?;
        let start_id: i64 =
            sqlx::query_scalar("SELECT coalesce(max(id), 0)::bigint FROM public.heartbeat")
                .fetch_one(&self.src)
                .await
                .ctx(|| "reading heartbeat".into())?;
        let final_id = Arc::new(AtomicI64::new(-1));
        let poller = spawn_heartbeat_poller(self.target.dsn("bench"), start_id, final_id.clone());
        let stop_sampler = CancellationToken::new();
        let sampler = self.sample_status(stop_sampler.clone());
        let main = async {
            let stop = CancellationToken::new();
            let hb = spawn_heartbeat(self.source.dsn("bench"), stop.clone());
            let run_started = Utc::now();
            let run = self.pgbench("bench").await;
            let ended = Instant::now();
            stop.cancel();
            let run = run?;
            let drain = self.caught_up(ended).await;
            let hb = hb.await.ctx(|| "heartbeat task".into())??;
            final_id.store(hb.max_id, Ordering::SeqCst);
            let seen = poller.await.ctx(|| "heartbeat poller".into())??;
            Ok::<_, String>((run, drain?, hb, seen, run_started))
        };
        let (samples, main) = tokio::join!(sampler, async {
            let r = main.await;
            stop_sampler.cancel();
            r
        });
        let (cap, (drain, drain_resolution), cap_hb, seen, run_started) = main?;
        let events = self.status().await?["events_applied"].as_i64().unwrap_or(0) - events_before;
        say!("capture: {:.1} tps", cap.tps);
        self.verify("load and drain").await?;

        let ratio = cap.tps / base.tps;
        let lat: Vec<f64> = seen.iter().map(|(_, _, ms)| *ms).collect();
        let slowest = {
            let mut v: Vec<&Seen> = seen.iter().collect();
            v.sort_by(|a, b| b.2.total_cmp(&a.2));
            v.iter()
                .take(5)
                .map(|(id, at, ms)| {
                    let into = (*at - run_started).num_milliseconds() as f64 / 1000.0;
                    format!("id {id} at +{into:.1} s: {ms:.0} ms")
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let lag = Percentiles::of(&lat);
        let own: Vec<f64> = samples.lag_seconds.iter().map(|s| s * 1000.0).collect();
        let own = Percentiles::of(&own);
        let mut r = self.rep();
        if seen.len() as u64 != cap_hb.count {
            r.problem(format!(
                "the heartbeat poller saw {} of the {} heartbeats inserted",
                seen.len(),
                cap_hb.count
            ));
        }
        for (name, hb) in [("baseline", &base_hb), ("capture", &cap_hb)] {
            if hb.errors > 0 {
                r.problem(format!(
                    "{} heartbeat insert(s) failed during the {name} run: {}",
                    hb.errors,
                    hb.last_error.clone().unwrap_or_default()
                ));
            }
        }
        r.figure(
            "2. Write overhead: pgbench tps with capture / without",
            format!(
                "{:.1}% ({:.1} / {:.1} tps)",
                ratio * 100.0,
                cap.tps,
                base.tps
            ),
            &format!("≥ {:.0}%", TPS_TARGET_RATIO * 100.0),
            Status::of(ratio >= TPS_TARGET_RATIO),
        );
        match &lag {
            Some(p) => r.figure(
                "3. Lag under load: heartbeat p99 (source insert → seen on target)",
                format!(
                    "{:.0} ms (p50 {:.0}, p95 {:.0}, max {:.0} ms; n={})",
                    p.p99, p.p50, p.p95, p.max, p.count
                ),
                &format!("< {LAG_P99_TARGET_MS:.0} ms"),
                Status::of(p.p99 < LAG_P99_TARGET_MS),
            ),
            None => r.figure(
                "3. Lag under load: heartbeat p99",
                "no heartbeat seen".into(),
                &format!("< {LAG_P99_TARGET_MS:.0} ms"),
                Status::Miss,
            ),
        }
        r.figure(
            "4. Drain: pgbench end → target equals source",
            secs(drain),
            &format!("< {}", secs(DRAIN_TARGET)),
            Status::of(drain < DRAIN_TARGET),
        );
        let pct = |p: &Option<Percentiles>| {
            p.as_ref().map_or("| – | – | – | – | 0 |".to_string(), |p| {
                format!(
                    "| {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                    p.p50, p.p95, p.p99, p.max, p.count
                )
            })
        };
        let states: Vec<String> = {
            let mut s = samples.states.clone();
            s.dedup();
            s
        };
        r.section(
            "2. Write overhead",
            format!(
                "`pgbench -c {c} -j {j} -T {t}` (default TPC-B-like script), `tps` without initial connection \
                 time. Baseline first, on `bench_nocap` (identical, never captured); then the capture run on `bench` \
                 with the migration running and synced. Before each: `VACUUM ANALYZE` of that database and \
                 `CHECKPOINT` on both clusters. Both runs had the same heartbeat insert every 100 ms on the \
                 source.\n\n\
                 | Run | tps | latency avg | transactions | failed |\n|---|---|---|---|---|\n\
                 | without capture (`bench_nocap`) | {:.1} | {} | {} | {} |\n\
                 | with capture (`bench`) | {:.1} | {} | {} | {} |\n\n\
                 Ratio: **{:.1}%**. pgshift applied {events} events during the capture run.\n\n\
                 CPU used while pgbench ran, in cores (CPU seconds per second of the run; this machine has {cpus}):\n\n\
                 {CPU_TABLE_HEAD}\n{}\n{}\n\n{}\n\
                 <details><summary>pgbench output</summary>\n\n```text\n--- without capture ---\n{}\n--- with capture ---\n{}\n```\n\n</details>\n",
                base.tps,
                fmt_ms(base.latency_ms),
                fmt_opt(base.transactions),
                base.failed.clone().unwrap_or_else(|| "–".into()),
                cap.tps,
                fmt_ms(cap.latency_ms),
                fmt_opt(cap.transactions),
                cap.failed.clone().unwrap_or_else(|| "–".into()),
                ratio * 100.0,
                cpu_row("without capture", &base),
                cpu_row("with capture", &cap),
                waits_table(&[("without capture", &base), ("with capture", &cap)]),
                base.output.trim(),
                cap.output.trim(),
                c = self.args.clients,
                j = self.args.threads(),
                t = self.args.seconds,
                cpus = common::machine().cpus,
            ),
        );
        r.section(
            "3. Lag under load",
            format!(
                "During the capture run a task inserted into `heartbeat` on the source every 100 ms; another \
                 polled the target every 20 ms for new ids and recorded, per id, the time it was seen minus its \
                 `at` (`clock_timestamp()` at insert; both clocks are this machine's). A heartbeat counts as seen \
                 when the poll that returned it completed, so the figures include up to ~20 ms of polling delay. \
                 pgshift's own `lag_seconds` was sampled from `GET /api/v1/migrations/{MIGRATION}` every 250 ms.\n\n\
                 | Lag (ms) | p50 | p95 | p99 | max | samples |\n|---|---|---|---|---|---|\n\
                 | heartbeat, seen on target − inserted on source | {}\n\
                 | pgshift `lag_seconds` × 1000 | {}\n\n\
                 Slowest heartbeats (time of insert after pgbench started): {slowest}.\n\n\
                 Heartbeats inserted: {} (seen on the target: {}). Highest `pending_events` pgshift reported: {}. \
                 Migration states seen: {}.\n",
                pct(&lag).trim_start_matches("| "),
                pct(&own).trim_start_matches("| "),
                cap_hb.count,
                seen.len(),
                samples.max_pending,
                states.join(" → "),
            ),
        );
        r.section(
            "4. Drain",
            format!(
                "From pgbench's exit until the target had the source's final `max(id)` and `count(*)` of \
                 `pgbench_history` and `sum(abalance)`, `count(*)` of `pgbench_accounts`, polled every 20 ms \
                 (time taken at the start of the poll that matched; the poll before it started {} earlier). Then \
                 every row of every table was compared.\n\nDrain: **{}**.\n",
                secs(drain_resolution),
                secs(drain)
            ),
        );
        Ok(base.tps)
    }

    /// Waits until the target has everything pgbench wrote (the source is idle). Returns the time from `ended` to the
    /// start of the poll that matched, and the gap to the poll before it.
    pub(super) async fn caught_up(&self, ended: Instant) -> R<(Duration, Duration)> {
        let src_hist = check::history(&self.src).await?;
        let src_acc = {
            let p = self.src.clone();
            tokio::spawn(async move { check::accounts(&p).await })
        };
        let mut src_acc_value: Option<(i64, i64)> = None;
        let mut src_acc = Some(src_acc);
        let limit = Duration::from_secs(300);
        let mut prev = ended;
        loop {
            let start = Instant::now();
            let h = check::history(&self.dst).await?;
            if h == src_hist {
                if let Some(task) = src_acc.take() {
                    src_acc_value = Some(task.await.ctx(|| "summing the source".into())??);
                }
                let a = check::accounts(&self.dst).await?;
                if Some(a) == src_acc_value {
                    return Ok((start - ended, start - prev));
                }
            }
            if ended.elapsed() > limit {
                return Err(format!(
                    "the target did not catch up within {}: history (max id, count) source {src_hist:?} target {h:?}; accounts (sum, count) source {src_acc_value:?}",
                    secs(limit)
                ));
            }
            prev = start;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
