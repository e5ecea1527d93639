//! `bench-engine`: measures the migration engine's figures against real PostgreSQL servers and
//! writes them as a Markdown report.
//!
//! ```sh
//! cargo run --release -p pgshift-tests --bin bench-engine -- [--scale 20] [--clients 4] [--seconds 60] [--out docs/benchmarks/engine.md]
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

mod check;
mod common;
mod logcap;
mod report;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use pgshift::engine::EngineSettings;
use pgshift_tests::server::TestServer;
use pgshift_tests::PgCluster;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::{mib, pg_command, secs, Ctx, Percentiles, R};
use report::{Report, Status};

const USAGE: &str = "\
usage: bench-engine [--scale N] [--clients N] [--seconds N] [--out PATH]

  --scale N     pgbench scale factor: N x 100,000 accounts (default 20)
  --clients N   pgbench clients for the write-overhead and lag runs (default 4)
  --seconds N   length of each pgbench run (default 60)
  --out PATH    where to write the Markdown report (default docs/benchmarks/engine.md
                in the workspace)

Run it with: cargo run --release -p pgshift-tests --bin bench-engine -- [options]";

/// The same on both clusters, and for the baselines.
const PG_SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "256MB"),
    ("max_wal_size", "2GB"),
    ("checkpoint_timeout", "15min"),
];

const MIGRATION: &str = "bench";

// Targets.
/// Not set by the brief: pgshift's copy should be no slower than `pg_dump -Fc | pg_restore`.
const COPY_TARGET_RATIO: f64 = 1.0;
const TPS_TARGET_RATIO: f64 = 0.85;
const LAG_P99_TARGET_MS: f64 = 1000.0;
const DRAIN_TARGET: Duration = Duration::from_secs(2);
const BULK_TIME_TARGET: Duration = Duration::from_secs(60);
const BULK_MEMORY_TARGET: u64 = 300 * 1024 * 1024;

const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
const HEARTBEAT_POLL_EVERY: Duration = Duration::from_millis(20);

/// Prepared identically in the source's `bench` and `bench_nocap` databases.
const PREPARE_SQL: &str = "
ALTER TABLE public.pgbench_history ADD COLUMN id bigserial PRIMARY KEY;
CREATE TABLE public.heartbeat (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
";

#[derive(Clone)]
struct Args {
    scale: u32,
    clients: u32,
    seconds: u32,
    out: PathBuf,
    raw: Vec<String>,
}

impl Args {
    fn parse() -> R<Args> {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let mut args = Args {
            scale: 20,
            clients: 4,
            seconds: 60,
            out: common::workspace_root().join("docs/benchmarks/engine.md"),
            raw: raw.clone(),
        };
        let mut it = raw.iter();
        while let Some(arg) = it.next() {
            let (key, inline) = match arg.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            if matches!(key, "-h" | "--help") {
                return Err(USAGE.into());
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| format!("{key} needs a value\n\n{USAGE}"))
            };
            let number = |v: String| -> R<u32> {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{key}: expected a positive integer, got {v:?}"))
            };
            match key {
                "--scale" => args.scale = number(value()?)?,
                "--clients" => args.clients = number(value()?)?,
                "--seconds" => args.seconds = number(value()?)?,
                "--out" => args.out = PathBuf::from(value()?),
                other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
            }
        }
        Ok(args)
    }

    fn command_line(&self) -> String {
        let mut s = String::from("cargo run --release -p pgshift-tests --bin bench-engine");
        if !self.raw.is_empty() {
            s.push_str(" --");
            for a in &self.raw {
                s.push(' ');
                s.push_str(&common::shell_quote(a));
            }
        }
        s
    }

    fn threads(&self) -> u32 {
        self.clients.min(2)
    }
}

fn main() {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    common::started();
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
            r.title_note = Some(format!(
                "smoke-sized run (scale {}, {} s pgbench runs): these figures are not representative. \
                 The reference run is `--scale 20 --clients 4 --seconds 60`.",
                args.scale, args.seconds
            ));
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
    let server = TestServer::start_in(&server_dir, EngineSettings::default()).await;
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

/// Fields drop in this order when a run is interrupted: pgshift first, then the pools, then the
/// clusters (pgshift would log errors about servers that vanished under it).
struct Bench {
    server: TestServer,
    /// Source `bench` (migrated).
    src: PgPool,
    /// Target `bench`.
    dst: PgPool,
    /// Source `bench_nocap`: the same data, never captured (the write-overhead baseline).
    nocap: PgPool,
    source: PgCluster,
    target: PgCluster,
    args: Args,
    report: Arc<Mutex<Report>>,
}

/// Removes a directory when dropped (also when the run is interrupted).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one pgbench run printed, and the CPU used while it ran.
struct Pgbench {
    tps: f64,
    latency_ms: Option<f64>,
    transactions: Option<u64>,
    failed: Option<String>,
    output: String,
    cpu: Option<CpuUse>,
    /// Where pgbench's backends were, from pg_stat_activity samples: (state: wait, share).
    waits: Vec<(String, f64)>,
}

/// CPU seconds used so far by each part.
struct Cpu {
    at: Instant,
    source: f64,
    target: f64,
    /// This process: pgshift and the benchmark's own tasks.
    own: f64,
    /// This process's waited-for children: pgbench.
    children: f64,
}

/// CPU used between two [`Cpu`] snapshots, in cores (CPU seconds per second).
struct CpuUse {
    wall: f64,
    source: f64,
    target: f64,
    own: f64,
    children: f64,
}

impl CpuUse {
    fn between(a: &Cpu, b: &Cpu) -> Self {
        let wall = (b.at - a.at).as_secs_f64().max(1e-9);
        Self {
            wall,
            source: (b.source - a.source) / wall,
            target: (b.target - a.target) / wall,
            own: (b.own - a.own) / wall,
            children: (b.children - a.children) / wall,
        }
    }

    fn row(&self, label: &str) -> String {
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

const CPU_TABLE_HEAD: &str = "| Run | wall | source PostgreSQL | target PostgreSQL | pgshift (this process) | pgbench | total |\n|---|---|---|---|---|---|---|";

/// The most frequent states of pgbench's backends, as a Markdown table.
fn waits_table(runs: &[(&str, &Pgbench)]) -> String {
    let mut s = String::from(
        "| Run | Where pgbench's backends were (share of samples of `pg_stat_activity`, every 100 ms) |\n|---|---|\n",
    );
    for (label, p) in runs {
        let top: Vec<String> = p
            .waits
            .iter()
            .take(6)
            .map(|(k, share)| format!("{k} {:.0}%", share * 100.0))
            .collect();
        s.push_str(&format!("| {label} | {} |\n", top.join(", ")));
    }
    s
}

fn cpu_row(label: &str, p: &Pgbench) -> String {
    p.cpu.as_ref().map_or_else(
        || format!("| {label} | – | – | – | – | – | – |"),
        |c| c.row(label),
    )
}

#[derive(Default)]
struct Heartbeats {
    count: u64,
    max_id: i64,
    errors: u64,
    last_error: Option<String>,
}

/// A heartbeat seen on the target: id, its `at`, and milliseconds from `at` to being seen.
type Seen = (i64, DateTime<Utc>, f64);

/// Samples of pgshift's own figures during a run.
#[derive(Default)]
struct StatusSamples {
    lag_seconds: Vec<f64>,
    max_pending: i64,
    states: Vec<String>,
}

impl Bench {
    fn rep(&self) -> MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cpu(&self) -> Cpu {
        let (own, children) = common::own_cpu();
        Cpu {
            at: Instant::now(),
            source: common::cluster_cpu(self.source.data_dir(), self.source.postmaster_pid()),
            target: common::cluster_cpu(self.target.data_dir(), self.target.postmaster_pid()),
            own,
            children,
        }
    }

    async fn phases(&self) -> R<()> {
        self.prepare().await?;
        self.initial_copy().await?;
        let base_tps = self.load().await?;
        self.paused_run(base_tps).await?;
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
        .await?;
        say!("all phases done");
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Setup
    // -----------------------------------------------------------------------

    async fn prepare(&self) -> R<()> {
        let scale = self.args.scale.to_string();
        say!("pgbench -i -I dtgvp -s {scale} in bench and bench_nocap on the source");
        let t0 = Instant::now();
        let init = |db: &'static str| ["-i", "-q", "-I", "dtgvp", "-s", &scale, db];
        let (a, b) = (init("bench"), init("bench_nocap"));
        tokio::join!(self.source.pgbench(&a), self.source.pgbench(&b));
        for db in ["bench", "bench_nocap"] {
            self.source.psql(db, PREPARE_SQL).await;
            self.source.psql(db, "VACUUM ANALYZE").await;
        }
        let init_time = t0.elapsed();
        say!("schema of bench to the target (pg_dump --schema-only | psql)");
        let mut dump = pg_command("pg_dump", self.source.port());
        dump.args(["--schema-only", "bench"]);
        let mut load = pg_command("psql", self.target.port());
        load.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "bench"]);
        common::pipe(dump, load).await?;

        let version: String = sqlx::query_scalar("SELECT version()")
            .fetch_one(&self.src)
            .await
            .ctx(|| "reading the server version".into())?;
        let size: String = sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size('bench'))")
            .fetch_one(&self.src)
            .await
            .ctx(|| "reading the database size".into())?;
        let counts = check::counts(&self.src).await?;
        let pgbench_version = common::run({
            let mut c = std::process::Command::new(common::pg_tool("pgbench"));
            c.arg("--version");
            c
        })
        .await
        .unwrap_or_default();
        let settings = PG_SETTINGS
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let tables = check::TABLES
            .iter()
            .zip(&counts)
            .map(|((t, _), n)| format!("`{t}` {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut r = self.rep();
        r.machine.push(("PostgreSQL".into(), version));
        r.machine
            .push(("pgbench".into(), pgbench_version.trim().to_string()));
        r.setup = vec![
            format!(
                "Options: scale {}, {} pgbench clients ({} threads), {} s per pgbench run.",
                self.args.scale,
                self.args.clients,
                self.args.threads(),
                self.args.seconds
            ),
            format!(
                "Two throwaway PostgreSQL clusters on this machine (source and target), both with {settings} \
                 on top of the test harness's defaults (fsync, synchronous_commit and full_page_writes on)."
            ),
            format!(
                "Source database `bench`: `pgbench -i -I dtgvp -s {}` ({}, {}), then `pgbench_history` got \
                 `id bigserial PRIMARY KEY` and `heartbeat(id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())` \
                 was created. Rows: {tables}. A second database `bench_nocap`, prepared identically, is never captured.",
                self.args.scale,
                size,
                common::secs(init_time)
            ),
            "Target database `bench`: the source's schema (`pg_dump --schema-only | psql`), so primary keys exist \
             before the copy."
                .into(),
            format!(
                "pgshift runs in the benchmark's process (`TestServer::start_in`) with the production engine settings: `{:?}`.",
                EngineSettings::default()
            ),
            format!(
                "The migration covers {}.",
                check::TABLES
                    .iter()
                    .map(|(t, _)| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "Data checks compare every row: per bucket of 100,000 keys, `count(*)` and \
             `md5(string_agg(t::text, ',' ORDER BY pk))` on both sides."
                .into(),
        ];
        Ok(())
    }

    /// CHECKPOINT on both clusters.
    async fn checkpoint(&self) -> R<()> {
        for (name, pool) in [("source", &self.src), ("target", &self.dst)] {
            sqlx::query("CHECKPOINT")
                .execute(pool)
                .await
                .ctx(|| format!("CHECKPOINT on the {name}"))?;
        }
        Ok(())
    }

    async fn status(&self) -> R<Value> {
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
    async fn verify(&self, phase: &str) -> R<()> {
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

    // -----------------------------------------------------------------------
    // 1. Initial copy
    // -----------------------------------------------------------------------

    async fn initial_copy(&self) -> R<()> {
        let src_counts = check::counts(&self.src).await?;
        let rows: i64 = src_counts.iter().sum();
        let table_args: Vec<String> = check::TABLES
            .iter()
            .flat_map(|(t, _)| ["-t".to_string(), t.to_string()])
            .collect();
        let (sport, tport) = (self.source.port(), self.target.port());

        say!("baseline: pg_dump -Fc | pg_restore into a fresh database on the target");
        self.target.create_database("restore_fc").await;
        self.checkpoint().await?;
        let t0 = Instant::now();
        let mut dump = pg_command("pg_dump", sport);
        dump.arg("-Fc").args(&table_args).arg("bench");
        let mut restore = pg_command("pg_restore", tport);
        restore.args(["-d", "restore_fc"]);
        common::pipe(dump, restore).await?;
        let fc = t0.elapsed();
        say!("pg_dump -Fc | pg_restore: {}", secs(fc));
        self.verify_restore("restore_fc", &src_counts).await?;

        say!("baseline: pg_dump -Fd -j 2, then pg_restore -j 2");
        let dir = std::env::temp_dir().join(format!("pgshift-bench-dump-{}", uuid::Uuid::new_v4()));
        self.target.create_database("restore_dir").await;
        self.checkpoint().await?;
        let t0 = Instant::now();
        let mut dump = pg_command("pg_dump", sport);
        dump.args(["-Fd", "-j", "2", "-f"])
            .arg(&dir)
            .args(&table_args)
            .arg("bench");
        let dumped = common::run(dump).await;
        let dump_time = t0.elapsed();
        let restored = match dumped {
            Ok(_) => {
                let mut restore = pg_command("pg_restore", tport);
                restore.args(["-j", "2", "-d", "restore_dir"]).arg(&dir);
                common::run(restore).await
            }
            Err(e) => Err(e),
        };
        let fd = t0.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        restored?;
        say!(
            "pg_dump -Fd -j 2 + pg_restore -j 2: {} (dump {}, restore {})",
            secs(fd),
            secs(dump_time),
            secs(fd - dump_time)
        );
        self.verify_restore("restore_dir", &src_counts).await?;

        say!("pgshift: creating the migration");
        self.server
            .add_cluster("source", &self.source.admin_dsn())
            .await;
        self.server
            .add_cluster("target", &self.target.admin_dsn())
            .await;
        let tables: Vec<&str> = check::TABLES.iter().map(|(t, _)| *t).collect();
        let (code, body) = self
            .server
            .post(
                "/migrations",
                json!({
                    "name": MIGRATION,
                    "source": {"cluster": "source", "database": "bench"},
                    "target": {"cluster": "target", "database": "bench"},
                    "tables": tables,
                }),
            )
            .await;
        if code != StatusCode::CREATED {
            return Err(format!("creating the migration answered {code}: {body}"));
        }
        self.checkpoint().await?;
        say!("pgshift: POST /start, then polling every 100 ms until every table is synced");
        let t0 = Instant::now();
        let (code, body) = self
            .server
            .post(&format!("/migrations/{MIGRATION}/start"), json!({}))
            .await;
        if code != StatusCode::OK {
            return Err(format!("starting the migration answered {code}: {body}"));
        }
        let limit = Duration::from_secs(600 + 60 * u64::from(self.args.scale));
        let mut synced_at: Vec<(String, Duration)> = Vec::new();
        let mut last_progress = Instant::now();
        let copy = loop {
            let m = self.status().await?;
            let now = t0.elapsed();
            for t in m["tables"].as_array().into_iter().flatten() {
                let name = t["name"].as_str().unwrap_or("?").to_string();
                if t["state"] == "synced" && !synced_at.iter().any(|(n, _)| *n == name) {
                    synced_at.push((name, now));
                }
            }
            if m["state"] == "synced" {
                break now;
            }
            if now > limit {
                return Err(format!(
                    "the initial copy did not finish within {}; last status: {m}",
                    secs(limit)
                ));
            }
            if last_progress.elapsed() >= Duration::from_secs(5) {
                last_progress = Instant::now();
                let tables: Vec<String> = m["tables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        format!(
                            "{} {} {}/{}",
                            t["name"]
                                .as_str()
                                .unwrap_or("?")
                                .trim_start_matches("public."),
                            t["state"].as_str().unwrap_or("?"),
                            t["rows_copied"],
                            t["rows_estimated"]
                        )
                    })
                    .collect();
                say!("copy {}: {}", secs(now), tables.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        say!("pgshift initial copy: {}", secs(copy));
        self.verify("initial copy").await?;

        let ratio = copy.as_secs_f64() / fc.as_secs_f64();
        let mut r = self.rep();
        r.figure(
            "1. Initial copy: pgshift, POST /start → all tables synced",
            format!("{} ({ratio:.2}× pg_dump -Fc | pg_restore)", secs(copy)),
            &format!("≤ {COPY_TARGET_RATIO:.1}× pg_dump -Fc | pg_restore (assumed: the brief sets no target)"),
            Status::of(ratio <= COPY_TARGET_RATIO),
        );
        r.figure(
            "1. Baseline: pg_dump -Fc | pg_restore",
            secs(fc),
            "—",
            Status::Info,
        );
        r.figure(
            "1. Baseline: pg_dump -Fd -j 2 + pg_restore -j 2",
            secs(fd),
            "—",
            Status::Info,
        );
        let per_table = synced_at
            .iter()
            .map(|(n, d)| format!("| `{n}` | {} |", secs(*d)))
            .collect::<Vec<_>>()
            .join("\n");
        let rate = |d: Duration| format!("{:.0}", rows as f64 / d.as_secs_f64());
        r.section(
            "1. Initial copy",
            format!(
                "All {rows} rows of the five tables, data and primary keys. The baselines restore into a fresh \
                 database on the target (tables, data, then indexes); pgshift copies into the target's `bench`, \
                 whose tables and primary keys exist already. CHECKPOINT on both clusters before each.\n\n\
                 | Method | Time | Rows/s |\n|---|---|---|\n\
                 | pgshift (POST /start → every table synced, polled every 100 ms) | {} | {} |\n\
                 | `pg_dump -Fc -t … bench \\| pg_restore -d restore_fc` | {} | {} |\n\
                 | `pg_dump -Fd -j 2 -t … bench` + `pg_restore -j 2` | {} (dump {}, restore {}) | {} |\n\n\
                 When each table reached `synced` (after POST /start):\n\n| Table | Synced at |\n|---|---|\n{per_table}\n",
                secs(copy),
                rate(copy),
                secs(fc),
                rate(fc),
                secs(fd),
                secs(dump_time),
                secs(fd - dump_time),
                rate(fd),
            ),
        );
        Ok(())
    }

    /// Compares a restored database's row counts with the source, then drops it.
    async fn verify_restore(&self, db: &str, src_counts: &[i64]) -> R<()> {
        // One plain connection, closed explicitly: a pool's close() can return while a
        // connection is still open (launchbadge/sqlx#3217), and DROP DATABASE would fail.
        let dsn = self.target.dsn(db);
        let mut conn = sqlx::PgConnection::connect(&dsn)
            .await
            .ctx(|| format!("connecting to {dsn}"))?;
        let mut counts = Vec::new();
        for (table, _) in check::TABLES {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&mut conn)
                .await
                .ctx(|| format!("counting {table} in {db}"))?;
            counts.push(n);
        }
        conn.close()
            .await
            .ctx(|| format!("closing the connection to {db}"))?;
        if counts != src_counts {
            self.rep().mismatch(format!(
                "baseline restore into {db}: row counts {counts:?}, source {src_counts:?} (tables {:?})",
                check::TABLES.iter().map(|(t, _)| *t).collect::<Vec<_>>()
            ));
        } else {
            self.rep()
                .checks
                .push(format!("baseline {db}: row counts equal the source's"));
        }
        // The closed connection's backend may take a moment to exit (autovacuum workers are
        // stopped by DROP DATABASE itself).
        let admin = pool(&self.target.admin_dsn(), 1).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            )
            .bind(db)
            .fetch_one(&admin)
            .await
            .ctx(|| "reading pg_stat_activity".into())?;
            if left == 0 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let dropped = sqlx::query(&format!("DROP DATABASE {db}"))
            .execute(&admin)
            .await
            .map(|_| ())
            .ctx(|| format!("DROP DATABASE {db}"));
        admin.close().await;
        dropped
    }

    // -----------------------------------------------------------------------
    // 2-4. Write overhead, lag under load, drain
    // -----------------------------------------------------------------------

    /// VACUUM ANALYZE of the database that pgbench is about to hit, then CHECKPOINT on both clusters.
    async fn prepare_run(&self, db: &PgPool) -> R<()> {
        sqlx::query("VACUUM ANALYZE")
            .execute(db)
            .await
            .ctx(|| "VACUUM ANALYZE".into())?;
        self.checkpoint().await
    }

    async fn pgbench(&self, db: &str) -> R<Pgbench> {
        let (c, j, t) = (
            self.args.clients.to_string(),
            self.args.threads().to_string(),
            self.args.seconds.to_string(),
        );
        say!("pgbench -c {c} -j {j} -T {t} {db}");
        let cpu_before = self.cpu();
        let stop = CancellationToken::new();
        let waits = spawn_wait_sampler(self.src.clone(), db.to_string(), stop.clone());
        let child = self
            .source
            .spawn_pgbench(&["-c", &c, "-j", &j, "-T", &t, db]);
        let limit = Duration::from_secs(u64::from(self.args.seconds) + 300);
        // On timeout the child is dropped, which kills it.
        let out = tokio::time::timeout(limit, child.wait_with_output()).await;
        stop.cancel();
        let out = out
            .map_err(|_| format!("pgbench on {db} did not finish within {}", secs(limit)))?
            .ctx(|| "waiting for pgbench".into())?;
        let cpu = CpuUse::between(&cpu_before, &self.cpu());
        let waits = waits.await.ctx(|| "wait-event sampler".into())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "pgbench on {db} failed ({}):\n{}\n{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut p = parse_pgbench(&stdout)?;
        p.cpu = Some(cpu);
        p.waits = waits;
        Ok(p)
    }

    /// Returns the baseline's tps.
    async fn load(&self) -> R<f64> {
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

    /// Diagnostic: the same pgbench run with the migration paused (capture triggers fire, nothing
    /// is applied), which tells the triggers' cost apart from the apply side's competition for
    /// the machine; then the time pgshift takes to apply the backlog after resuming.
    async fn paused_run(&self, base_tps: f64) -> R<()> {
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

    /// Waits until the target has everything pgbench wrote (the source is idle). Returns the time from `ended` to the
    /// start of the poll that matched, and the gap to the poll before it.
    async fn caught_up(&self, ended: Instant) -> R<(Duration, Duration)> {
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

    /// pgshift's lag and pending events every 250 ms until `stop`.
    async fn sample_status(&self, stop: CancellationToken) -> StatusSamples {
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

    // -----------------------------------------------------------------------
    // 5. Bulk changes
    // -----------------------------------------------------------------------

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

    /// ERROR, FATAL and PANIC lines (and the statements logged with them) of both servers.
    fn collect_server_logs(&self) {
        let mut logs = Vec::new();
        for (name, cluster) in [("Source", &self.source), ("Target", &self.target)] {
            let text = std::fs::read_to_string(cluster.log_path()).unwrap_or_default();
            let mut lines = Vec::new();
            let mut after_error = false;
            for line in text.lines() {
                let is_error =
                    line.contains("ERROR:") || line.contains("FATAL:") || line.contains("PANIC:");
                if is_error || (after_error && line.contains("STATEMENT:")) {
                    lines.push(line.chars().take(500).collect());
                }
                after_error = is_error;
            }
            let errors = lines
                .iter()
                .filter(|l: &&String| !l.contains("STATEMENT:"))
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

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3} ms"))
}

fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

fn parse_pgbench(out: &str) -> R<Pgbench> {
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
            .map(str::to_string)
    };
    let tps = out
        .lines()
        .filter(|l| l.contains("without initial connection time"))
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| {
            format!(
                "no `tps = … (without initial connection time)` line in pgbench's output:\n{out}"
            )
        })?;
    Ok(Pgbench {
        tps,
        latency_ms: field("latency average =")
            .and_then(|v| v.split_whitespace().next()?.parse().ok()),
        transactions: field("number of transactions actually processed:")
            .and_then(|v| v.split_whitespace().next()?.parse().ok()),
        failed: field("number of failed transactions:"),
        output: out.to_string(),
        cpu: None,
        waits: Vec::new(),
    })
}

/// Inserts a heartbeat row every 100 ms until `stop`.
fn spawn_heartbeat(dsn: String, stop: CancellationToken) -> JoinHandle<R<Heartbeats>> {
    tokio::spawn(async move {
        let pool = pool(&dsn, 1).await?;
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hb = Heartbeats::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            match sqlx::query_scalar::<_, i64>(
                "INSERT INTO public.heartbeat DEFAULT VALUES RETURNING id",
            )
            .fetch_one(&pool)
            .await
            {
                Ok(id) => {
                    hb.count += 1;
                    hb.max_id = hb.max_id.max(id);
                }
                Err(e) => {
                    hb.errors += 1;
                    hb.last_error = Some(e.to_string());
                }
            }
        }
        pool.close().await;
        Ok(hb)
    })
}

/// Polls the target for new heartbeats every 20 ms; per id, milliseconds from its insert on
/// the source to the poll that saw it (with its `at`). Ends once it has seen `final_id` (set
/// when the heartbeat stops; -1 before).
fn spawn_heartbeat_poller(
    dsn: String,
    after: i64,
    final_id: Arc<AtomicI64>,
) -> JoinHandle<R<Vec<Seen>>> {
    tokio::spawn(async move {
        let pool = pool(&dsn, 1).await?;
        let mut tick = tokio::time::interval(HEARTBEAT_POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = after;
        let mut seen = Vec::new();
        let mut deadline: Option<Instant> = None;
        loop {
            tick.tick().await;
            let fin = final_id.load(Ordering::SeqCst);
            if fin >= 0 {
                if last >= fin {
                    break;
                }
                let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(120));
                if Instant::now() > d {
                    pool.close().await;
                    return Err(format!(
                        "heartbeat {fin} never reached the target (last seen: {last})"
                    ));
                }
            }
            let rows: Vec<(i64, DateTime<Utc>)> =
                sqlx::query_as("SELECT id, at FROM public.heartbeat WHERE id > $1 ORDER BY id")
                    .bind(last)
                    .fetch_all(&pool)
                    .await
                    .ctx(|| "polling heartbeat on the target".into())?;
            let now = Utc::now();
            for (id, at) in rows {
                let ms = (now - at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0;
                seen.push((id, at, ms));
                last = id;
            }
        }
        pool.close().await;
        Ok(seen)
    })
}

/// Samples the states and wait events of pgbench's backends on `db` every 100 ms until
/// `stop`; returns each \"state: wait\" with its share of the samples, most frequent first.
fn spawn_wait_sampler(
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
fn spawn_rss_sampler(stop: CancellationToken) -> JoinHandle<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_output() {
        let out = "\
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 2
query mode: simple
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 8123
number of failed transactions: 0 (0.000%)
latency average = 4.921 ms
initial connection time = 12.345 ms
tps = 812.345678 (without initial connection time)
";
        let p = parse_pgbench(out).unwrap();
        assert_eq!(p.tps, 812.345678);
        assert_eq!(p.latency_ms, Some(4.921));
        assert_eq!(p.transactions, Some(8123));
        assert_eq!(p.failed.as_deref(), Some("0 (0.000%)"));
        assert!(parse_pgbench("nothing").is_err());
    }
}
