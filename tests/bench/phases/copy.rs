//! Phase 1: the initial copy by pgshift, against `pg_dump | pg_restore`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection;

use crate::bench::{Bench, MIGRATION};
use crate::common::{self, pg_command, secs, Ctx, R};
use crate::report::Status;
use crate::{check, pool, say};

/// Not set by the brief: pgshift's copy should be no slower than `pg_dump -Fc | pg_restore`.
const COPY_TARGET_RATIO: f64 = 1.0;

impl Bench {
    /// The two baselines, then pgshift's copy; figures and section 1.
    pub async fn initial_copy(&self) -> R<()> {
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

        let (copy, synced_at) = self.start_migration().await?;
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

    /// Without `copy` in `--only`: the other phases still need a running, synced migration, so
    /// pgshift copies the tables as in phase 1, without the pg_dump baselines or any figure.
    pub async fn start_unmeasured(&self) -> R<()> {
        let (copy, _) = self.start_migration().await?;
        say!(
            "pgshift initial copy (not measured: --only): {}",
            secs(copy)
        );
        self.verify("initial copy (setup only, not measured)").await
    }

    /// Creates the migration, then POST /start and polls until every table is synced. Returns
    /// the time from the POST to synced, and when each table reached `synced`.
    async fn start_migration(&self) -> R<(Duration, Vec<(String, Duration)>)> {
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
        Ok((copy, synced_at))
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
}
