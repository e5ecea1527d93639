//! The scenarios of issue 6, the same for every tool. For each tool, the copy scenarios run on
//! their own database pair (a copy of the `--scale` template; for `copy-create` pgshift gets an
//! empty target database); load, bulk and cutover run in that order on one pair (a copy of the
//! `--load-scale` template) with the tool replicating from the start. A failed scenario is
//! reported in its table and ends that tool's session.

mod bulk;
mod copy;
mod cutover;
mod load;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::args::Scenario;
use crate::common::{secs, Ctx, R};
use crate::heartbeat::spawn_heartbeat;
use crate::report::Report;
use crate::rig::{Check, Rig, COPY_TEMPLATE, LOAD_TEMPLATE};
use crate::say;
use crate::tools::Pair;
use crate::tools::{Tool, ToolKind};

pub const LOAD: &str = "Write overhead, lag under load, drain";
pub const COPY: &str = "Initial copy";
pub const COPY_CREATE: &str = "Initial copy into an empty database";
pub const BULK: &str = "Bulk change";
pub const CUTOVER: &str = "Cutover";

/// The tables of the selected scenarios, in order, with what they measure.
pub fn declare(rig: &Rig, report: &mut Report) {
    let a = &rig.args;
    for s in &a.scenarios {
        report.tables.push(match s {
            Scenario::Load => load::table(a),
            Scenario::Copy => copy::table(a),
            Scenario::CopyCreate => copy::table_create(a),
            Scenario::Bulk => bulk::table(a),
            Scenario::Cutover => cutover::table(a),
        });
    }
}

/// What runs without any tool: pgbench's baseline TPS (for the current wal_level) and, once,
/// the pg_dump | pg_restore baselines of the copy (`with_dumps`); for copy-create, `pg_dump -Fc
/// | pg_restore` again at `wal_level = logical` (the second call).
pub async fn baselines(rig: &Rig, report: &mut Report, with_dumps: bool) {
    if rig.args.runs(Scenario::Load) {
        if let Err(e) = load::baseline(rig, report).await {
            let label = load::baseline_label(rig);
            report.table(LOAD).failed(&label, &e);
            report.failures.push(format!("{label}: {e}"));
        }
    }
    let copies: Vec<&str> = [(Scenario::Copy, COPY), (Scenario::CopyCreate, COPY_CREATE)]
        .into_iter()
        .filter(|(s, _)| rig.args.runs(*s))
        .map(|(_, h)| h)
        .collect();
    if with_dumps && !copies.is_empty() {
        if let Err(e) = copy::dumps(rig, report).await {
            for h in &copies {
                report.table(h).failed("pg_dump | pg_restore", &e);
            }
            report.failures.push(format!("pg_dump baselines: {e}"));
        }
    }
    if !with_dumps && rig.args.runs(Scenario::CopyCreate) {
        if let Err(e) = copy::dump_again(rig, report).await {
            report
                .table(COPY_CREATE)
                .failed("pg_dump | pg_restore (`wal_level = logical`)", &e);
            report
                .failures
                .push(format!("pg_dump baseline at wal_level = logical: {e}"));
        }
    }
}

/// Every selected scenario through one tool.
pub async fn run_tool(rig: &Rig, report: &mut Report, kind: ToolKind) {
    if rig.args.runs(Scenario::Copy) {
        copy_session(rig, report, kind, COPY).await;
    }
    if rig.args.runs(Scenario::CopyCreate) {
        copy_session(rig, report, kind, COPY_CREATE).await;
    }
    let load_like = [Scenario::Load, Scenario::Bulk, Scenario::Cutover];
    if load_like.iter().any(|s| rig.args.runs(*s)) {
        load_session(rig, report, kind).await;
    }
}

/// Records a data check: a difference is a finding of the run, reported with the details.
pub fn record_check(report: &mut Report, kind: ToolKind, what: &str, check: &Check) {
    if let Check::Differs(d) = check {
        report.mismatches.push(format!(
            "{} — {what}: the target differs from the source:\n{}",
            kind.label(),
            d.join("\n")
        ));
    }
}

/// One tool's initial copy for `heading` (copy or copy-create): in copy-create pgshift gets an
/// empty target database (it creates the schema), the others the schema loaded beforehand.
async fn copy_session(rig: &Rig, report: &mut Report, kind: ToolKind, heading: &str) {
    let label = kind.label();
    let create = heading == COPY_CREATE && kind == ToolKind::Pgshift;
    say!(
        "{label}: {}",
        if heading == COPY_CREATE {
            "initial copy into an empty database"
        } else {
            "initial copy"
        }
    );
    let suffix = if heading == COPY_CREATE {
        "create"
    } else {
        "copy"
    };
    let pair = match rig
        .pair_with(COPY_TEMPLATE, &format!("{}_{suffix}", kind.name()), !create)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            report.table(heading).failed(label, &e);
            report.failures.push(format!("{label}, {heading}: {e}"));
            return;
        }
    };
    let _ = rig.checkpoint().await;
    let load = crate::common::load_average();
    let (tool, took, started) = start_and_copy(rig, kind, &pair).await;
    let mut result = match (took, &tool) {
        (Ok(d), Some(t)) => {
            copy::record(rig, report, heading, kind, t, &pair, d, started, &load).await
        }
        (Ok(_), None) => Err("the tool did not start".into()),
        (Err(e), _) => Err(e),
    };
    if let Some(tool) = tool {
        result = result.and(tool.stop(&pair).await);
    }
    if let Err(e) = result {
        report.table(heading).failed(label, &e);
        report.failures.push(format!("{label}, {heading}: {e}"));
    }
    if let Err(e) = rig.drop_pair(pair).await {
        report
            .failures
            .push(format!("{label}: dropping the databases: {e}"));
    }
}

async fn load_session(rig: &Rig, report: &mut Report, kind: ToolKind) {
    let label = kind.label();
    let steps: Vec<&str> = [
        (Scenario::Load, LOAD),
        (Scenario::Bulk, BULK),
        (Scenario::Cutover, CUTOVER),
    ]
    .into_iter()
    .filter(|(s, _)| rig.args.runs(*s))
    .map(|(_, h)| h)
    .collect();
    let fail_all = |report: &mut Report, from: usize, e: &str| {
        for h in &steps[from..] {
            report.table(h).failed(label, e);
        }
        report.failures.push(format!("{label}: {e}"));
    };
    say!("{label}: setting up replication of the load database");
    let pair = match rig
        .pair(LOAD_TEMPLATE, &format!("{}_load", kind.name()))
        .await
    {
        Ok(p) => p,
        Err(e) => return fail_all(report, 0, &e),
    };
    let (tool, copied, _) = start_and_copy(rig, kind, &pair).await;
    let Some(mut tool) = tool else {
        fail_all(report, 0, &copied.err().unwrap_or_default());
        let _ = rig.drop_pair(pair).await;
        return;
    };
    // A failed step leaves the pair in an unknown state: the tool's later steps are skipped.
    let mut failed = match copied {
        Ok(d) => {
            say!(
                "{label}: initial copy of the load database done in {}",
                secs(d)
            );
            false
        }
        Err(e) => {
            fail_all(report, 0, &format!("initial copy: {e}"));
            true
        }
    };
    for (i, heading) in steps.iter().enumerate() {
        if failed {
            break;
        }
        let r = match *heading {
            LOAD => load::measure(rig, report, kind, &tool, &pair).await,
            BULK => bulk::measure(rig, report, kind, &tool, &pair).await,
            _ => cutover::measure(rig, report, kind, &mut tool, &pair).await,
        };
        if let Err(e) = r {
            say!("{label}: {heading} failed: {e}");
            fail_all(report, i, &format!("{heading}: {e}"));
            failed = true;
        }
    }
    if let Err(e) = tool.stop(&pair).await {
        report.failures.push(format!("{label}: stopping: {e}"));
    }
    if let Err(e) = rig.drop_pair(pair).await {
        report
            .failures
            .push(format!("{label}: dropping the databases: {e}"));
    }
}

/// Starts `kind` replicating `pair` while a heartbeat row goes to the source every 100 ms (the
/// database is live, as in a real migration; Londiste's ticker would otherwise tick the idle
/// queue once a minute, its `ticker_idle_period`), waits until the tool says the copy is done,
/// stops the heartbeat and waits until the target's aggregates equal the source's. Returns the
/// tool if it started, the time from the first setup command until identical, and the instant
/// of that first command.
async fn start_and_copy(
    rig: &Rig,
    kind: ToolKind,
    pair: &Pair,
) -> (Option<Tool>, R<Duration>, Instant) {
    let stop = CancellationToken::new();
    let hb = spawn_heartbeat(rig.source.dsn(&pair.db), stop.clone());
    let t0 = Instant::now();
    let tool = Tool::start(kind, pair).await;
    let copied = match &tool {
        Ok(t) => rig.wait_copied(t, pair, t0).await,
        Err(e) => Err(e.clone()),
    };
    stop.cancel();
    let beats = hb.await.ctx(|| "heartbeat task".into());
    let tool = match tool {
        Ok(t) => t,
        Err(e) => return (None, Err(e), t0),
    };
    let result = async {
        let copied = copied?;
        let beats = beats??;
        if beats.errors > 0 {
            return Err(format!(
                "{} heartbeat insert(s) failed during the copy: {}",
                beats.errors,
                beats.last_error.unwrap_or_default()
            ));
        }
        let identical = rig
            .wait_identical(pair, t0, Duration::from_millis(100), &tool.log_hint())
            .await?;
        say!(
            "  the tool said copied after {}, target identical after {}",
            secs(copied),
            secs(identical)
        );
        Ok(identical)
    }
    .await;
    (Some(tool), result, t0)
}
