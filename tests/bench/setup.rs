//! Setup before any phase: pgbench's tables in `bench` and `bench_nocap` on the source, the
//! schema on the target, and the report's Setup lines.

use std::time::Instant;

use pgshift::engine::EngineSettings;

use crate::bench::Bench;
use crate::common::{self, pg_command, Ctx, R};
use crate::{check, say, PG_SETTINGS};

/// Prepared identically in the source's `bench` and `bench_nocap` databases.
const PREPARE_SQL: &str = "
ALTER TABLE public.pgbench_history ADD COLUMN id bigserial PRIMARY KEY;
CREATE TABLE public.heartbeat (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
";

impl Bench {
    /// pgbench's tables in `bench` and `bench_nocap` (both even when `--only` leaves out
    /// `overhead`, the only user of `bench_nocap`: a partial run then measures from the same
    /// state as a full run), the schema on the target, and the Setup lines of the report.
    pub async fn prepare(&self) -> R<()> {
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
                "Options: scale {}, {} pgbench clients ({} threads), {} s per pgbench run.{}",
                self.args.scale,
                self.args.clients,
                self.args.threads(),
                self.args.seconds,
                if self.args.partial() {
                    format!(" Phases (`--only`): {}.", self.args.phase_list())
                } else {
                    String::new()
                }
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
                "pgshift runs in the benchmark's process (`TestServer::start_configured`, on its own data directory) with the production engine settings: `{:?}`.",
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
}
