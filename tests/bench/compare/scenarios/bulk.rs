//! Bulk change: one UPDATE of every account (1,000,000 rows at the default load scale), then
//! one DELETE of half of them: the time until the target has each, and the peak memory of the
//! processes doing the replication meanwhile.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{record_check, BULK};
use crate::args::Args;
use crate::common::{mib, secs, Ctx, R};
use crate::procs::{self, spawn_peak_sampler};
use crate::report::{Better, Report, Table};
use crate::rig::Rig;
use crate::say;
use crate::tools::{Pair, Tool, ToolKind};

const CHANGES: [(&str, &str); 2] = [
    (
        "UPDATE",
        "UPDATE public.pgbench_accounts SET abalance = abalance + 1",
    ),
    (
        "DELETE",
        "DELETE FROM public.pgbench_accounts WHERE aid % 2 = 0",
    ),
];

pub fn table(a: &Args) -> Table {
    let rows = u64::from(a.load_scale) * 100_000;
    let mut t = Table::new(
        BULK,
        format!(
            "After the load scenario, on the same database: `{}` ({rows} rows, one transaction), then `{}` \
             ({} rows). **Until target has it**: from the statement's start on the source until the target's \
             aggregates equal the source's, polled every 100 ms (the statement's own time, with the tool's \
             capture, in brackets). **Memory**: the replicating processes' resident memory, summed, sampled \
             every 100 ms from /proc during that time: peak `RssAnon` (their own memory) and, in brackets, \
             peak `VmRSS` (which for PostgreSQL backends also counts the shared buffers they touched). \
             `CHECKPOINT` on both servers before each statement.",
            CHANGES[0].1,
            CHANGES[1].1,
            rows / 2
        ),
        &[
            "Tool",
            "change",
            "until target has it (statement)",
            "peak memory: anon (RSS)",
            "memory before: anon (RSS)",
            "processes",
            "target = source",
        ],
    );
    t.notes.push(
        "The processes: pgshift, the `pgshift serve` process; Londiste3, both `londiste worker` daemons (root and \
         leaf, with any copy process they fork) and `pgqd`; native, the walsender on the source and the apply \
         worker on the target."
            .into(),
    );
    t
}

pub async fn measure(
    rig: &Rig,
    report: &mut Report,
    kind: ToolKind,
    tool: &Tool,
    pair: &Pair,
) -> R<()> {
    let label = kind.label();
    let pids = tool.processes(pair).await?;
    if pids.is_empty() {
        return Err(format!("no replicating process found for {label}"));
    }
    let mut rows = Vec::new();
    for (name, sql) in CHANGES {
        rig.checkpoint().await?;
        let before = procs::memory(&pids);
        let stop = CancellationToken::new();
        let sampler = spawn_peak_sampler(pids.clone(), stop.clone());
        say!("{label}: bulk {name}: {sql}");
        let t0 = Instant::now();
        let changed = sqlx::query(sql).execute(&pair.src).await;
        let statement = t0.elapsed();
        let changed = match changed {
            Ok(r) => r.rows_affected(),
            Err(e) => {
                stop.cancel();
                return Err(format!("{sql}: {e}"));
            }
        };
        let waited = rig
            .wait_identical(pair, t0, Duration::from_millis(100), &tool.log_hint())
            .await;
        stop.cancel();
        let peak = sampler.await.ctx(|| "memory sampler".into())?;
        let total = waited?;
        say!(
            "  {changed} rows; target has it {} after the start (statement {}); peak anon {}",
            secs(total),
            secs(statement),
            mib(peak.anon)
        );
        report.figure(
            &format!("Bulk {name} of {changed} rows: until the target has it"),
            Better::Lower,
            label,
            total.as_secs_f64(),
            secs(total),
        );
        report.figure(
            &format!("Bulk {name}: peak memory (anon)"),
            Better::Lower,
            label,
            peak.anon as f64,
            mib(peak.anon),
        );
        rows.push(vec![
            label.to_string(),
            format!("{name} of {changed} rows"),
            format!("{} ({})", secs(total), secs(statement)),
            format!("{} ({})", mib(peak.anon), mib(peak.rss)),
            format!("{} ({})", mib(before.anon), mib(before.rss)),
            pids.len().to_string(),
        ]);
    }
    let check = rig.verify(pair, &format!("{label}, bulk changes")).await?;
    record_check(report, kind, "after the bulk changes", &check);
    for mut r in rows {
        r.push(check.cell());
        report.table(BULK).rows.push(r);
    }
    Ok(())
}
