//! The two servers and the databases the scenarios run on: pgbench templates made once,
//! copied for every run (`CREATE DATABASE … TEMPLATE`), the schema loaded on the target, and
//! the waits and checks every scenario ends with.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pgshift_tests::PgCluster;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::args::{Args, Scenario};
use crate::common::{self, pg_command, secs, Ctx, R};
use crate::tools::{Pair, Tool};
use crate::{check, say};

/// The same on both servers, for every tool and the baselines.
pub const PG_SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "256MB"),
    ("max_wal_size", "2GB"),
    ("checkpoint_timeout", "15min"),
];

/// Made identically in both templates after `pgbench -i`: every table has a primary key
/// (which all three tools need for updates and deletes) and the heartbeat table exists.
const PREPARE_SQL: &str = "
ALTER TABLE public.pgbench_history ADD COLUMN id bigserial PRIMARY KEY;
CREATE TABLE public.heartbeat (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
";

pub const LOAD_TEMPLATE: &str = "tmpl_load";
pub const COPY_TEMPLATE: &str = "tmpl_copy";

/// How a run's data check ended.
pub enum Check {
    Identical,
    /// One description per differing table.
    Differs(Vec<String>),
}

impl Check {
    pub fn cell(&self) -> String {
        match self {
            Check::Identical => "identical".into(),
            Check::Differs(d) => format!("**DIFFERS** ({} table(s))", d.len()),
        }
    }
}

pub struct Rig {
    pub args: Args,
    pub source: PgCluster,
    pub target: PgCluster,
    /// Temporary files of the run (tool configuration, logs, dumps).
    pub work: PathBuf,
    /// Whether the servers run with `wal_level = logical` (only for native replication).
    pub logical: bool,
    runs: AtomicU32,
}

async fn pool(url: &str, max: u32) -> R<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(60))
        .connect(url)
        .await
        .ctx(|| format!("connecting to {url}"))
}

impl Rig {
    pub async fn start(args: Args) -> R<Rig> {
        let work = std::env::temp_dir().join(format!("pgshift-compare-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
        say!("starting the source and target servers");
        let (source, target) = tokio::join!(
            PgCluster::start_with(PG_SETTINGS),
            PgCluster::start_with(PG_SETTINGS)
        );
        Ok(Rig {
            args,
            source,
            target,
            work,
            logical: false,
            runs: AtomicU32::new(0),
        })
    }

    /// Runs SQL on the `postgres` database of the source (`on_target` false) or the target.
    pub async fn admin(&self, on_target: bool, sql: &str) -> R<()> {
        let c = if on_target {
            &self.target
        } else {
            &self.source
        };
        let p = pool(&c.admin_dsn(), 1).await?;
        let r = sqlx::raw_sql(sql).execute(&p).await;
        p.close().await;
        r.map(|_| ()).ctx(|| format!("`{sql}`"))
    }

    /// `pgbench -i` into the templates the selected scenarios need; returns the setup lines.
    pub async fn prepare_templates(&self) -> R<Vec<String>> {
        let mut lines = Vec::new();
        let mut make = Vec::new();
        let a = &self.args;
        if a.runs(Scenario::Load) || a.runs(Scenario::Bulk) || a.runs(Scenario::Cutover) {
            make.push((LOAD_TEMPLATE, a.load_scale));
        }
        if a.runs(Scenario::Copy) || a.runs(Scenario::CopyCreate) {
            make.push((COPY_TEMPLATE, a.scale));
        }
        for (name, scale) in make {
            say!("pgbench -i -s {scale} into {name} on the source");
            let t0 = Instant::now();
            self.admin(false, &format!("CREATE DATABASE {name}"))
                .await?;
            let s = scale.to_string();
            self.source
                .pgbench(&["-i", "-q", "-I", "dtgvp", "-s", &s, name])
                .await;
            let p = pool(&self.source.dsn(name), 1).await?;
            let r = sqlx::raw_sql(PREPARE_SQL).execute(&p).await;
            let r2 = sqlx::raw_sql("VACUUM ANALYZE").execute(&p).await;
            let size: String =
                sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))")
                    .fetch_one(&p)
                    .await
                    .unwrap_or_default();
            p.close().await;
            r.ctx(|| "preparing the template".into())?;
            r2.ctx(|| "VACUUM ANALYZE".into())?;
            lines.push(format!(
                "`{name}`: `pgbench -i -I dtgvp -s {scale}` ({} accounts, {size}, made in {}), then \
                 `pgbench_history` got `id bigserial PRIMARY KEY` and `heartbeat(id bigserial PRIMARY KEY, \
                 at timestamptz DEFAULT clock_timestamp())` was created.",
                u64::from(scale) * 100_000,
                secs(t0.elapsed())
            ));
        }
        Ok(lines)
    }

    /// A fresh database named `<label>_<n>` on both servers: on the source a copy of
    /// `template`, on the target its schema only (tables and primary keys, no rows).
    pub async fn pair(&self, template: &str, label: &str) -> R<Pair> {
        self.pair_with(template, label, true).await
    }

    /// As [`Rig::pair`]; with `target_schema` false the target database stays empty (for a
    /// tool that creates the schema itself). The time `pg_dump --schema-only | psql` took is
    /// kept in [`Pair::schema_loaded`].
    pub async fn pair_with(&self, template: &str, label: &str, target_schema: bool) -> R<Pair> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let db = format!("{label}_{n}");
        self.admin(false, &format!("CREATE DATABASE {db} TEMPLATE {template}"))
            .await?;
        self.admin(true, &format!("CREATE DATABASE {db}")).await?;
        let mut schema_loaded = None;
        if target_schema {
            let t0 = Instant::now();
            let mut dump = pg_command("pg_dump", self.source.port());
            dump.args(["--schema-only", template]);
            let mut load = pg_command("psql", self.target.port());
            load.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db]);
            common::pipe(dump, load).await?;
            schema_loaded = Some(t0.elapsed());
        }
        let work = self.work.join(&db);
        std::fs::create_dir_all(&work).ctx(|| format!("creating {}", work.display()))?;
        Ok(Pair {
            src: pool(&self.source.dsn(&db), 5).await?,
            dst: pool(&self.target.dsn(&db), 5).await?,
            source_port: self.source.port(),
            target_port: self.target.port(),
            db,
            work,
            schema_loaded,
        })
    }

    /// Drops the pair's databases on both servers.
    pub async fn drop_pair(&self, pair: Pair) -> R<()> {
        pair.src.close().await;
        pair.dst.close().await;
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pair.db);
        self.admin(false, &sql).await?;
        self.admin(true, &sql).await
    }

    /// `wal_level = logical` on both servers (ALTER SYSTEM) and a restart of both: what native
    /// logical replication needs and pgshift and Londiste do not.
    pub async fn set_logical_wal(&mut self) -> R<()> {
        say!("restarting both servers with wal_level = logical (for native logical replication)");
        for on_target in [false, true] {
            self.admin(on_target, "ALTER SYSTEM SET wal_level = logical")
                .await?;
        }
        tokio::join!(self.source.restart(), self.target.restart());
        self.logical = true;
        Ok(())
    }

    /// CHECKPOINT on both servers.
    pub async fn checkpoint(&self) -> R<()> {
        self.admin(false, "CHECKPOINT").await?;
        self.admin(true, "CHECKPOINT").await
    }

    /// Polls until the tool says its initial copy is done. Returns the time since `since`.
    pub async fn wait_copied(&self, tool: &Tool, pair: &Pair, since: Instant) -> R<Duration> {
        let limit = Duration::from_secs(900 + 60 * u64::from(self.args.scale));
        let mut last_note = Instant::now();
        loop {
            let start = Instant::now();
            if tool.copy_done(pair).await? {
                return Ok(start - since);
            }
            if since.elapsed() > limit {
                return Err(format!(
                    "the initial copy did not finish within {} ({})",
                    secs(limit),
                    tool.log_hint()
                ));
            }
            if last_note.elapsed() > Duration::from_secs(10) {
                last_note = Instant::now();
                say!("  still copying after {}", secs(since.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls every `every` until the target's aggregates equal the source's (the source is idle
    /// now). Returns the time from `since` to the start of the poll that matched.
    pub async fn wait_identical(
        &self,
        pair: &Pair,
        since: Instant,
        every: Duration,
        hint: &str,
    ) -> R<Duration> {
        let want = state(&pair.src).await?;
        let limit = Duration::from_secs(1200 + 60 * u64::from(self.args.load_scale));
        let mut last_note = Instant::now();
        loop {
            let start = Instant::now();
            let got = state(&pair.dst).await?;
            if got == want {
                return Ok(start - since);
            }
            if since.elapsed() > limit {
                return Err(format!(
                    "the target did not catch up within {}: source {want:?}, target {got:?} ({hint})",
                    secs(limit)
                ));
            }
            if last_note.elapsed() > Duration::from_secs(10) {
                last_note = Instant::now();
                say!("  target not caught up after {}", secs(since.elapsed()));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Compares every row of every table (retrying for up to 15 s, the source being idle).
    pub async fn verify(&self, pair: &Pair, what: &str) -> R<Check> {
        let t0 = Instant::now();
        loop {
            let diffs = check::compare(&pair.src, &pair.dst).await?;
            if diffs.is_empty() {
                say!("{what}: target identical to the source");
                return Ok(Check::Identical);
            }
            if t0.elapsed() > Duration::from_secs(15) {
                say!(
                    "{what}: target DIFFERS from the source: {}",
                    diffs.join("; ")
                );
                return Ok(Check::Differs(diffs));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Every row of the `public` tables (the pgbench tables and `heartbeat`), counted exactly.
pub async fn count_rows(pool: &PgPool) -> R<i64> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'public'",
    )
    .fetch_all(pool)
    .await
    .ctx(|| "listing the tables".into())?;
    let mut n = 0;
    for t in tables {
        let c: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
            .fetch_one(pool)
            .await
            .ctx(|| format!("counting the rows of {t}"))?;
        n += c;
    }
    Ok(n)
}

/// Cheap aggregates of every table: equal on both sides once the target has every change.
pub async fn state(pool: &PgPool) -> R<Vec<Option<i64>>> {
    sqlx::query_scalar(
        "SELECT ARRAY[(SELECT sum(abalance) FROM public.pgbench_accounts),
                      (SELECT count(*) FROM public.pgbench_accounts),
                      (SELECT sum(bbalance) FROM public.pgbench_branches),
                      (SELECT sum(tbalance) FROM public.pgbench_tellers),
                      (SELECT max(id) FROM public.pgbench_history),
                      (SELECT count(*) FROM public.pgbench_history),
                      (SELECT max(id) FROM public.heartbeat),
                      (SELECT count(*) FROM public.heartbeat)]::bigint[]",
    )
    .fetch_one(pool)
    .await
    .ctx(|| "reading the tables' aggregates".into())
}

impl Drop for Rig {
    /// Removes the work directory, unless `PGSHIFT_BENCH_KEEP` is set (to read the tools' logs).
    fn drop(&mut self) {
        if std::env::var_os("PGSHIFT_BENCH_KEEP").is_some() {
            say!("kept the tools' files in {}", self.work.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}
