//! `bench-engine`: measures the migration engine's figures against real PostgreSQL servers and
//! writes them as a Markdown report.
//!
//! ```sh
//! cargo run --release -p pgshift-tests --bin bench-engine -- [--scale 20] [--clients 4] [--seconds 60] [--out docs/benchmarks/engine.md] [--only copy,overhead,bulk] [--cutovers 20]
//! ```
//!
//! Two throwaway PostgreSQL 15 clusters (source and target, same settings) and pgshift itself,
//! in this process with its production engine settings. The phases:
//!
//! 1. initial copy of a pgbench database, against `pg_dump | pg_restore`;
//! 2. pgbench throughput on the source with and without capture;
//! 3. replication lag under that load, from a heartbeat table;
//! 4. how long the target takes to catch up once the load stops;
//! 5. a bulk UPDATE and a bulk DELETE: time until the target has them, and memory.
//!
//! Between 4 and 5 a diagnostic run (not one of the issue's figures) repeats pgbench with the
//! migration paused, which separates the capture triggers' cost from the apply side's, and then
//! times the catch-up after resuming. Each pgbench run also records the CPU used by each part
//! (source, target, pgshift, pgbench) and where pgbench's backends waited.
//!
//! Every phase ends with an exact comparison of the source and the target; a mismatch makes the
//! run exit with status 1. Progress goes to stderr.
//!
//! `--only` runs some of the phases (`copy` is 1, `overhead` 2 to 4 with the diagnostic, `bulk`
//! 5), to measure one figure again without the whole run; the report says which ran. Phase 6,
//! `cutover` (`--cutovers` cutovers under pgbench load, 20 by default), runs only when `--only`
//! names it, since it ends the migration.
//!
//! The files: `args` (command line), `bench` (state, phase order, checks shared by the phases),
//! `setup`, `phases/*` (one per phase), `pgbench` (running it and reading its output), `samplers`
//! (what runs beside a measurement), `heartbeat` (shared with `bench-compare`), `check`
//! (comparing source and target), `report`, `logcap`, `common`.

mod args;
mod bench;
mod check;
mod common;
mod heartbeat;
mod logcap;
mod pgbench;
mod phases;
mod report;
mod samplers;
mod setup;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use pgshift::engine::EngineSettings;
use pgshift_tests::server::TestServer;
use pgshift_tests::PgCluster;
use sqlx::postgres::{PgPool, PgPoolOptions};

use args::Args;
use bench::Bench;
use common::{Ctx, R};
use report::Report;

/// The same on both clusters, and for the baselines.
const PG_SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "256MB"),
    ("max_wal_size", "2GB"),
    ("checkpoint_timeout", "15min"),
];

fn main() {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    common::started();
    // The benchmark never signs in to the dashboard; with the first admin's password given, the
    // server has no one-time password to log (a warning the report would count as a problem).
    if std::env::var_os("PGSHIFT_ADMIN_PASSWORD").is_none() {
        let password = format!("bench-{}", uuid::Uuid::new_v4().simple());
        std::env::set_var("PGSHIFT_ADMIN_PASSWORD", password);
    }
    logcap::init();
    let report = Arc::new(Mutex::new(Report {
        command: args.command_line(),
        date: chrono::Local::now()
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        ..Report::default()
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = AssertUnwindSafe(run(args.clone(), report.clone())).catch_unwind() => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    drop(runtime);
    let mut report = report.lock().unwrap_or_else(|e| e.into_inner());
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
    eprintln!("{}", report.summary());
    match report.write(&args.out) {
        Ok(()) => say!("report written to {}", args.out.display()),
        Err(e) => eprintln!("cannot write the report: {e}"),
    }
    if report.failed() {
        eprintln!(
            "bench-engine FAILED: {}",
            report
                .aborted
                .clone()
                .unwrap_or_else(|| format!("{} data mismatch(es)", report.mismatches.len()))
        );
        std::process::exit(1);
    }
}

/// Sets everything up, runs the phases, and tears down (also when a phase fails).
async fn run(args: Args, report: Arc<Mutex<Report>>) -> R<()> {
    let machine = common::machine();
    {
        let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
        if args.scale < 10 || args.seconds < 30 {
            r.title_notes.push(format!(
                "smoke-sized run (scale {}, {} s pgbench runs): these figures are not representative. \
                 The reference run is `--scale 20 --clients 4 --seconds 60`.",
                args.scale, args.seconds
            ));
        }
        if let Some(note) = args.partial_note() {
            r.title_notes.push(note);
            r.phases_run = Some(args.phase_list());
        }
        r.machine = vec![
            ("CPU".into(), machine.cpu_model.clone()),
            ("CPUs (nproc)".into(), machine.cpus.to_string()),
            ("Memory (MemTotal)".into(), machine.memory.clone()),
            ("Kernel".into(), machine.kernel.clone()),
            (
                "Load average at start (1/5/15 min)".into(),
                machine.load.clone(),
            ),
            (
                "pgshift version (git describe)".into(),
                common::git_version(),
            ),
        ];
    }
    say!(
        "bench-engine: scale {}, {} clients, {} s runs; {} CPUs, {} RAM, load {}",
        args.scale,
        args.clients,
        args.seconds,
        machine.cpus,
        machine.memory,
        machine.load
    );
    if args.partial() {
        say!("--only: running {}", args.phase_list());
    }
    say!("starting the source and target clusters");
    let (source, target) = tokio::join!(
        PgCluster::start_with(PG_SETTINGS),
        PgCluster::start_with(PG_SETTINGS)
    );
    for db in ["bench", "bench_nocap"] {
        source.create_database(db).await;
    }
    target.create_database("bench").await;
    let src = pool(&source.dsn("bench"), 5).await?;
    let dst = pool(&target.dsn("bench"), 5).await?;
    let nocap = pool(&source.dsn("bench_nocap"), 2).await?;
    let server_dir = std::env::temp_dir().join(format!("pgshift-bench-{}", uuid::Uuid::new_v4()));
    // Declared before the server, so dropped after it.
    let _remove_server_dir = RemoveDir(server_dir.clone());
    say!(
        "starting pgshift in-process (production engine settings) in {}",
        server_dir.display()
    );
    // The test server takes no configuration from the environment: the first admin's password
    // (set in `main`) is handed over here, so no one-time password is generated and logged.
    let server = TestServer::start_configured(|c| {
        c.data_dir = server_dir.clone();
        c.engine = EngineSettings::default();
        c.admin_password = std::env::var("PGSHIFT_ADMIN_PASSWORD").ok();
    })
    .await;
    let bench = Bench {
        args,
        source,
        target,
        src,
        dst,
        nocap,
        server,
        report,
    };
    let result = AssertUnwindSafe(bench.phases()).catch_unwind().await;
    bench.collect_server_logs();
    let Bench {
        source,
        target,
        src,
        dst,
        nocap,
        server,
        ..
    } = bench;
    say!("stopping pgshift and the clusters");
    server.stop().await;
    for p in [src, dst, nocap] {
        p.close().await;
    }
    drop(source);
    drop(target);
    match result {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn pool(dsn: &str, max: u32) -> R<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(60))
        .connect(dsn)
        .await
        .ctx(|| format!("connecting to {dsn}"))
}

/// Removes a directory when dropped (also when the run is interrupted).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
