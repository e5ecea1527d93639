//! Write overhead, lag under load and drain: `pgbench -c 4 -j 2 -T 60` on the source while the
//! tool replicates, against the same run with no tool; a heartbeat row every 100 ms on the
//! source whose age is read on the target; then the time from pgbench's exit until the target
//! is identical.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{record_check, LOAD};
use crate::args::Args;
use crate::common::{secs, Ctx, Percentiles, R};
use crate::heartbeat::{spawn_heartbeat, spawn_heartbeat_poller};
use crate::report::{Better, Report, Table};
use crate::rig::{Rig, LOAD_TEMPLATE};
use crate::say;
use crate::tools::{Pair, Tool, ToolKind};

pub fn table(a: &Args) -> Table {
    let mut t = Table::new(
        LOAD,
        format!(
            "`pgbench -c {c} -j {j} -T {s}` (TPC-B-like default script) on the source's copy of `{LOAD_TEMPLATE}` \
             (scale {ls}), `tps` without initial connection time, after `VACUUM ANALYZE` and `CHECKPOINT` on \
             both servers. Each tool replicates the database (initial copy done) before the run. During every \
             run, also the baseline's, a task inserts a heartbeat row on the source every 100 ms; for the tools \
             another polls the target every 20 ms and records each row's age (seen on the target − \
             `clock_timestamp()` at insert, one machine's clock), so lag includes up to ~20 ms of polling. \
             **Drain**: from pgbench's exit until the target's aggregates (`sum` of the balances, `count` and \
             `max(id)` of every table) equal the source's, polled every 20 ms. The baseline runs with the \
             same `wal_level` as the tool it is compared with.",
            c = a.clients,
            j = a.threads(),
            s = a.seconds,
            ls = a.load_scale,
        ),
        &[
            "Tool",
            "tps",
            "vs. no tool",
            "lag p50",
            "lag p95",
            "lag p99",
            "lag max",
            "heartbeats seen",
            "drain",
            "target = source",
        ],
    );
    t.notes.push(
        "Lag figures are in milliseconds. Native logical replication runs with `wal_level = logical` (a restart \
         of the source that pgshift and Londiste3 do not need), so it is compared with a baseline at \
         `wal_level = logical`; the others with a baseline at the default `wal_level = replica`."
            .into(),
    );
    t
}

pub fn baseline_label(rig: &Rig) -> String {
    format!(
        "no tool (`wal_level = {}`)",
        if rig.logical { "logical" } else { "replica" }
    )
}

/// pgbench on a copy of the template with no tool, the heartbeat running.
pub async fn baseline(rig: &Rig, report: &mut Report) -> R<()> {
    let label = baseline_label(rig);
    say!("{label}: pgbench baseline");
    let pair = rig.pair(LOAD_TEMPLATE, "baseline").await?;
    let result = async {
        prepare(rig, &pair.src).await?;
        let stop = CancellationToken::new();
        let hb = spawn_heartbeat(rig.source.dsn(&pair.db), stop.clone());
        let tps = pgbench(rig, &pair.db).await;
        stop.cancel();
        hb.await.ctx(|| "heartbeat task".into())??;
        tps
    }
    .await;
    rig.drop_pair(pair).await?;
    let tps = result?;
    report.baseline_tps[usize::from(rig.logical)] = Some(tps);
    let mut row = vec![label, format!("{tps:.1}"), "100%".into()];
    row.resize(10, "–".into());
    report.table(LOAD).rows.push(row);
    Ok(())
}

async fn prepare(rig: &Rig, db: &PgPool) -> R<()> {
    sqlx::query("VACUUM ANALYZE")
        .execute(db)
        .await
        .ctx(|| "VACUUM ANALYZE".into())?;
    rig.checkpoint().await
}

/// `pgbench -c -j -T` on the source's `db`; its tps.
pub async fn pgbench(rig: &Rig, db: &str) -> R<f64> {
    let a = &rig.args;
    let (c, j, t) = (
        a.clients.to_string(),
        a.threads().to_string(),
        a.seconds.to_string(),
    );
    say!("  pgbench -c {c} -j {j} -T {t} {db}");
    let out = rig
        .source
        .spawn_pgbench(&["-c", &c, "-j", &j, "-T", &t, db])
        .wait_with_output()
        .await
        .ctx(|| "running pgbench".into())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_tps(&text).ok_or_else(|| format!("no tps line in pgbench's output:\n{text}"))
}

fn parse_tps(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub async fn measure(
    rig: &Rig,
    report: &mut Report,
    kind: ToolKind,
    _tool: &Tool,
    pair: &Pair,
) -> R<()> {
    let label = kind.label();
    say!("{label}: write overhead and lag under load");
    prepare(rig, &pair.src).await?;
    let start_id: i64 =
        sqlx::query_scalar("SELECT coalesce(max(id), 0)::bigint FROM public.heartbeat")
            .fetch_one(&pair.src)
            .await
            .ctx(|| "reading the heartbeat".into())?;
    let final_id = Arc::new(AtomicI64::new(-1));
    let poller = spawn_heartbeat_poller(rig.target.dsn(&pair.db), start_id, final_id.clone());
    let stop = CancellationToken::new();
    let hb = spawn_heartbeat(rig.source.dsn(&pair.db), stop.clone());
    let tps = pgbench(rig, &pair.db).await;
    let ended = Instant::now();
    stop.cancel();
    let beats = hb.await.ctx(|| "heartbeat task".into())??;
    final_id.store(beats.max_id.max(start_id), Ordering::SeqCst);
    let tps = tps?;
    say!("  {tps:.1} tps; waiting for the target to catch up");
    let drain = rig
        .wait_identical(
            pair,
            ended,
            Duration::from_millis(20),
            "drain after pgbench",
        )
        .await?;
    let seen = poller.await.ctx(|| "heartbeat poller".into())??;
    let lags: Vec<f64> = seen.iter().map(|s| s.2).collect();
    let p = Percentiles::of(&lags);
    say!(
        "  drain {}; lag p99 {:?} ms",
        secs(drain),
        p.as_ref().map(|p| p.p99)
    );
    let check = rig.verify(pair, &format!("{label}, load")).await?;
    record_check(report, kind, "after the load", &check);
    let base = report.baseline_tps[usize::from(rig.logical)];
    let vs = base.map_or("–".into(), |b| format!("{:.1}%", tps / b * 100.0));
    if let Some(b) = base {
        report.figure(
            "Write overhead: tps vs. no tool",
            Better::Higher,
            label,
            tps / b,
            vs.clone(),
        );
    }
    if let Some(p) = &p {
        report.figure(
            "Lag p50 (ms)",
            Better::Lower,
            label,
            p.p50,
            format!("{:.0}", p.p50),
        );
        report.figure(
            "Lag p99 (ms)",
            Better::Lower,
            label,
            p.p99,
            format!("{:.0}", p.p99),
        );
        report.figure(
            "Lag max (ms)",
            Better::Lower,
            label,
            p.max,
            format!("{:.0}", p.max),
        );
    }
    report.figure(
        "Drain: load stop → identical",
        Better::Lower,
        label,
        drain.as_secs_f64(),
        secs(drain),
    );
    let ms =
        |f: fn(&Percentiles) -> f64| p.as_ref().map_or("–".into(), |p| format!("{:.0}", f(p)));
    report.table(LOAD).rows.push(vec![
        label.to_string(),
        format!("{tps:.1}"),
        vs,
        ms(|p| p.p50),
        ms(|p| p.p95),
        ms(|p| p.p99),
        ms(|p| p.max),
        format!("{} / {}", seen.len(), beats.count),
        secs(drain),
        check.cell(),
    ]);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_pgbench_tps() {
        let out =
            "latency average = 4.921 ms\ntps = 812.345678 (without initial connection time)\n";
        assert_eq!(super::parse_tps(out), Some(812.345678));
        assert_eq!(super::parse_tps("nothing"), None);
    }
}
