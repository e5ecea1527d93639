//! `bench-compare`: the same workloads through pgshift, Londiste3 and PostgreSQL's native
//! logical replication, on two local servers, written to docs/benchmarks.md (issue 6).
//!
//! ```sh
//! tests/bench/run [--scale 50] [--load-scale 10] [--clients 4] [--seconds 60] [--tools pgshift,londiste,native] [--scenarios load,copy,copy-create,bulk,cutover]
//! ```
//!
//! `tests/bench/run` installs Londiste3's Debian packages, builds pgshift and this binary, and
//! runs it. This process starts two throwaway PostgreSQL 15 servers (source and target, same
//! settings), makes the pgbench templates, then:
//!
//! 1. with the default `wal_level = replica`: the baselines (pgbench with no tool, the
//!    pg_dump | pg_restore copies), then every scenario through pgshift and Londiste3;
//! 2. after restarting both servers with `wal_level = logical`: the pgbench baseline again and
//!    every scenario through native logical replication.
//!
//! Every scenario ends by comparing every row of the source and the target; a tool whose target
//! differs is reported as such, and the run exits with status 1 (also when a tool failed).
//! Progress goes to stderr.
//!
//! The files: `compare/args` (command line), `compare/rig` (servers, databases, waits, checks),
//! `compare/scenarios/*` (one per scenario, the same for every tool), `tools/*` (one per tool),
//! `compare/procs` (memory of the replicating processes), `compare/report`; shared with
//! `bench-engine`: `common`, `check`, `heartbeat`.

#[path = "compare/args.rs"]
mod args;
// `check` and `common` are shared with bench-engine, which uses more of them.
#[allow(dead_code)]
mod check;
#[allow(dead_code)]
mod common;
mod heartbeat;
#[path = "compare/procs.rs"]
mod procs;
#[path = "compare/report.rs"]
mod report;
#[path = "compare/rig.rs"]
mod rig;
#[path = "compare/scenarios/mod.rs"]
mod scenarios;
mod tools;

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use args::Args;
use common::R;
use report::Report;
use rig::Rig;
use tools::ToolKind;

fn main() {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    common::started();
    let mut report = Report {
        command: args.command_line(),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        ..Report::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = AssertUnwindSafe(run(args.clone(), &mut report)).catch_unwind() => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    drop(runtime);
    match outcome {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => report.aborted = Some(e),
        Some(Err(panic)) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            report.aborted = Some(format!("panic: {msg}"));
        }
        None => report.aborted = Some("interrupted (Ctrl-C)".into()),
    }
    match report.write(&args.out) {
        Ok(()) => say!("report written to {}", args.out.display()),
        Err(e) => eprintln!("cannot write the report: {e}"),
    }
    if report.failed() {
        for f in report.failures.iter().chain(&report.aborted) {
            eprintln!("bench-compare: {f}");
        }
        for m in &report.mismatches {
            eprintln!("bench-compare: {}", m.lines().next().unwrap_or(""));
        }
        eprintln!("bench-compare FAILED");
        std::process::exit(1);
    }
}

async fn run(args: Args, report: &mut Report) -> R<()> {
    machine(report, &args).await;
    let mut rig = Rig::start(args.clone()).await?;
    report.setup.extend(setup_lines());
    scenarios::declare(&rig, report);
    let templates = rig.prepare_templates().await?;
    report.setup.extend(templates);
    postgres_version(&rig, report).await;

    scenarios::baselines(&rig, report, true).await;
    for kind in [ToolKind::Pgshift, ToolKind::Londiste] {
        if args.uses(kind) {
            scenarios::run_tool(&rig, report, kind).await;
        }
    }
    if args.uses(ToolKind::Native) {
        rig.set_logical_wal().await?;
        scenarios::baselines(&rig, report, false).await;
        scenarios::run_tool(&rig, report, ToolKind::Native).await;
    }
    say!("all runs done");
    Ok(())
}

/// The report's machine table: what the figures depend on.
async fn machine(report: &mut Report, args: &Args) {
    let m = common::machine();
    if args.smoke() {
        report.notes.push(format!(
            "Smoke-sized run (scale {}, load scale {}, {} clients, {} s pgbench runs): these figures are not \
             representative. The reference run is `tests/bench/run` with its defaults, on an idle machine.",
            args.scale, args.load_scale, args.clients, args.seconds
        ));
    }
    let version = |program: &str, arg: &str| {
        let mut c = std::process::Command::new(program);
        c.arg(arg);
        async move {
            common::run(c)
                .await
                .map(|s| s.lines().next().unwrap_or("").trim().to_string())
                .unwrap_or_else(|e| format!("unavailable ({})", e.lines().next().unwrap_or("")))
        }
    };
    report.machine = vec![
        ("CPU".into(), m.cpu_model),
        ("CPUs (nproc)".into(), m.cpus.to_string()),
        ("Memory (MemTotal)".into(), m.memory),
        ("Kernel".into(), m.kernel),
        ("Load average at start (1/5/15 min)".into(), m.load),
        ("pgshift (git describe)".into(), common::git_version()),
    ];
    if args.uses(ToolKind::Londiste) {
        report
            .machine
            .push(("londiste".into(), version("londiste", "--version").await));
        report.machine.push((
            "PgQ, pgqd, londiste SQL (Debian packages)".into(),
            debian_versions().await,
        ));
    }
}

async fn debian_versions() -> String {
    let mut c = std::process::Command::new("dpkg-query");
    c.args([
        "-W",
        "-f=${Package} ${Version}, ",
        "postgresql-15-pgq3",
        "pgqd",
        "postgresql-15-londiste-sql",
        "python3-londiste",
    ]);
    common::run(c)
        .await
        .map(|s| s.trim().trim_end_matches(',').to_string())
        .unwrap_or_else(|_| "unknown".into())
}

async fn postgres_version(rig: &Rig, report: &mut Report) {
    let mut c = common::pg_command("psql", rig.source.port());
    c.args(["-XAtc", "SELECT version()", "postgres"]);
    let v = common::run(c).await.unwrap_or_default();
    report
        .machine
        .push(("PostgreSQL".into(), v.trim().to_string()));
}

fn setup_lines() -> Vec<String> {
    let settings = rig::PG_SETTINGS
        .iter()
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        format!(
            "Two throwaway PostgreSQL 15 servers on this machine (source and target), both with {settings} on top \
             of the test harness's defaults (fsync, synchronous_commit and full_page_writes on), \
             `wal_level = replica` (the default) for pgshift, Londiste3 and the first baselines."
        ),
        "Native logical replication runs last: both servers are restarted with `wal_level = logical` first \
         (`ALTER SYSTEM`), a restart that pgshift and Londiste3 do not need. `CREATE PUBLICATION … FOR ALL \
         TABLES` and `CREATE SUBSCRIPTION` run as the superuser."
            .into(),
        format!(
            "pgshift: the `pgshift serve` binary ({}) in its own process with its default engine settings, a \
             SQLite metadata store, driven through its REST API (clusters, then a migration of every table, then \
             start).",
            if cfg!(debug_assertions) {
                "**debug build** (`BENCH_PROFILE=dev`): not representative"
            } else {
                "release build"
            }
        ),
        "Londiste3 as its tutorial sets it up, from Debian's packages: `londiste root.ini create-root`, \
         `londiste -d root.ini worker`, `londiste leaf.ini create-leaf --provider=…`, `londiste -d leaf.ini \
         worker`, `pgqd -d pgqd.ini`, then `add-table --all` on the root and on the leaf. Default settings \
         (pgqd ticks every second; workers sleep `loop_delay = 1.0` s between batches) except log and pid \
         paths, and pgqd's `database_list`."
            .into(),
        "Every tool gets fresh databases for each session: on the source a copy of a template \
         (`CREATE DATABASE … TEMPLATE`), on the target the template's schema (`pg_dump --schema-only | psql`; \
         in the copy-create scenario pgshift gets an empty database instead and creates the schema itself), \
         dropped afterwards."
            .into(),
        "Data checks compare every row of every table: per bucket of 100,000 keys, `count(*)` and \
         `md5(string_agg(t::text, ',' ORDER BY pk))` on both sides (sequences are not compared)."
            .into(),
    ]
}
