//! Initial copy: the time each tool takes to get a `pgbench -i -s 50` database fully synced,
//! next to `pg_dump -Fc | pg_restore` and `pg_dump -Fd -j 2` + `pg_restore -j 2` of the same
//! data. Two scenarios share this file: `copy` (every tool into tables made beforehand with
//! `pg_dump --schema-only | psql`) and `copy-create` (pgshift with `"schema": "create"` into an
//! empty target database; the other tools, which cannot create the schema, as in `copy`).

use std::time::{Duration, Instant};

use super::{record_check, COPY, COPY_CREATE};
use crate::args::{Args, Scenario};
use crate::common::{self, pg_command, secs, R};
use crate::report::{Better, Report, Table};
use crate::rig::{count_rows, Rig, COPY_TEMPLATE};
use crate::say;
use crate::tools::{Pair, Tool, ToolKind};

pub fn table(a: &Args) -> Table {
    let mut t = Table::new(
        COPY,
        format!(
            "The source's copy of `{COPY_TEMPLATE}` (`pgbench -i -s {}`: {} accounts). For the tools: from the \
             first setup command until the tool says every table is copied and following (pgshift: migration \
             `synced`; Londiste3: every table `ok` in `londiste.table_info` on the leaf; native: every table \
             `r` in `pg_subscription_rel`), polled every 100 ms, and then the target's aggregates equal the \
             source's. The database is live meanwhile: a heartbeat row is inserted every 100 ms until the tool \
             says the copy is done (without writes Londiste3's ticker ticks the idle queue once a minute, \
             `ticker_idle_period`, and its tables wait for those ticks to leave `catching-up`). The \
             target's tables and primary keys exist beforehand (`pg_dump --schema-only | psql`). The pg_dump \
             baselines restore into an empty database (tables, data, then primary keys). `CHECKPOINT` on both \
             servers before each.",
            a.scale,
            u64::from(a.scale) * 100_000
        ),
        &["Method", "time", "vs. `pg_dump -Fc \\| pg_restore`", "target = source"],
    );
    t.notes.push(
        "Londiste3 copies one table at a time by default (`parallel_copies = 1`), and each table then goes \
         through `catching-up`, `wanna-sync` and `do-sync` before `ok`, each step waiting for a tick and a \
         worker loop (about 10 s per table on top of the COPY itself with the default ticker and `loop_delay`). \
         Native logical replication copies up to `max_sync_workers_per_subscription = 2` tables at once, \
         pgshift `copy_parallelism = 2`."
            .into(),
    );
    t
}

/// The `copy-create` table: every figure with what exactly was timed and the rows per second.
pub fn table_create(a: &Args) -> Table {
    let mut t = Table::new(
        COPY_CREATE,
        format!(
            "The source's copy of `{COPY_TEMPLATE}` (`pgbench -i -s {}`: {} accounts, every table with a primary \
             key and no other index or constraint), moved into an **empty** target database by pgshift with \
             `\"schema\": \"create\"` (it builds the tables and their primary keys, copies, then builds what \
             is left) and by `pg_dump`/`pg_restore`. Native logical replication cannot create tables: its \
             target's schema is loaded beforehand with `pg_dump --schema-only | psql` (not counted in its \
             time; shown in its row). pgshift and the pg_dump baselines run at `wal_level = replica`; native \
             runs after both servers were restarted with `wal_level = logical`, so `pg_dump -Fc \\| pg_restore` \
             is timed again there. The tools' databases are live during the copy (a heartbeat row every \
             100 ms), and a tool's time ends when its own state says done *and* the target's aggregates equal \
             the source's (then every row is compared). `CHECKPOINT` on both servers before each. Rows are \
             counted exactly on the target at the end (the tools' include the heartbeat rows). The load \
             average (1/5/15 min) is read just before each timing starts; the benchmark's own servers are \
             part of it.",
            a.scale,
            u64::from(a.scale) * 100_000
        ),
        &[
            "Method",
            "what was timed",
            "time",
            "rows",
            "rows/s",
            "vs. `pg_dump -Fc \\| pg_restore`",
            "load before",
            "target = source",
        ],
    );
    t.notes.push(
        "pg_restore reads a pipe, so it cannot restore in parallel (`-j` needs a file or directory): the \
         `-Fc` row is one pg_dump process feeding one pg_restore process, which creates the tables, loads \
         them with `COPY`, then builds the primary keys. The `-Fd -j 2` row writes the dump to a directory \
         on the same disk first and counts both steps. pgshift copies two tables at once \
         (`copy_parallelism = 2`) in 200,000-row chunks, each chunk its own `COPY` between a source and a \
         target session, into tables whose primary keys exist from the start (the worker applies changes \
         to them while they are copied); native logical replication runs up to \
         `max_sync_workers_per_subscription = 2` table syncs, each one `COPY` of the whole table, into the \
         pre-made tables (primary keys in place too)."
            .into(),
    );
    t
}

/// The tables of the selected copy scenarios (the dumps fill both the same way).
fn copy_tables(rig: &Rig) -> Vec<&'static str> {
    let mut t = Vec::new();
    if rig.args.runs(Scenario::Copy) {
        t.push(COPY);
    }
    if rig.args.runs(Scenario::CopyCreate) {
        t.push(COPY_CREATE);
    }
    t
}

/// `rows` in `took`, per second, with thousands separators.
fn per_second(rows: i64, took: Duration) -> String {
    thousands((rows as f64 / took.as_secs_f64()).round() as i64)
}

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// One method's row in `heading` (its layout differs between the two tables).
struct Row<'a> {
    method: &'a str,
    timed: &'a str,
    took: Duration,
    rows: i64,
    load: &'a str,
    check: &'a str,
}

fn push_row(report: &mut Report, heading: &str, r: Row) {
    let ratio = report.copy_baseline.map_or("–".into(), |fc| {
        format!("{:.2}×", r.took.as_secs_f64() / fc.as_secs_f64())
    });
    let cells = if heading == COPY_CREATE {
        vec![
            r.method.to_string(),
            r.timed.to_string(),
            secs(r.took),
            thousands(r.rows),
            per_second(r.rows, r.took),
            ratio,
            r.load.to_string(),
            r.check.to_string(),
        ]
    } else {
        vec![
            r.method.to_string(),
            secs(r.took),
            ratio,
            r.check.to_string(),
        ]
    };
    report.table(heading).rows.push(cells);
}

/// `pg_dump -Fc | pg_restore` into a fresh database `db` of the target; the time and the rows
/// restored.
async fn dump_fc(rig: &Rig, db: &str) -> R<(Duration, i64)> {
    rig.admin(true, &format!("CREATE DATABASE {db}")).await?;
    rig.checkpoint().await?;
    let t0 = Instant::now();
    let mut dump = pg_command("pg_dump", rig.source.port());
    dump.args(["-Fc", COPY_TEMPLATE]);
    let mut restore = pg_command("pg_restore", rig.target.port());
    restore.args(["-d", db]);
    common::pipe(dump, restore).await?;
    let took = t0.elapsed();
    let rows = restored_rows(rig, db).await;
    rig.admin(true, &format!("DROP DATABASE {db}")).await?;
    Ok((took, rows?))
}

async fn restored_rows(rig: &Rig, db: &str) -> R<i64> {
    let p = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&rig.target.dsn(db))
        .await
        .map_err(|e| format!("connecting to {db}: {e}"))?;
    let n = count_rows(&p).await;
    p.close().await;
    n
}

pub async fn dumps(rig: &Rig, report: &mut Report) -> R<()> {
    let tables = copy_tables(rig);
    say!("baseline: pg_dump -Fc | pg_restore");
    let load = common::load_average();
    let (fc, rows) = dump_fc(rig, "restore_fc").await?;
    say!("baseline: pg_dump -Fc | pg_restore {}", secs(fc));
    report.copy_baseline = Some(fc);
    for h in &tables {
        push_row(
            report,
            h,
            Row {
                method: "`pg_dump -Fc \\| pg_restore` (`wal_level = replica`)",
                timed: "`pg_dump -Fc` piped into `pg_restore -d` (no `-j`), empty database: start of pg_dump → \
                        pg_restore's exit (tables, data, primary keys)",
                took: fc,
                rows,
                load: &load,
                check: "–",
            },
        );
    }

    say!("baseline: pg_dump -Fd -j 2, then pg_restore -j 2");
    let dir = rig.work.join("dump-fd");
    rig.admin(true, "CREATE DATABASE restore_fd").await?;
    rig.checkpoint().await?;
    let load = common::load_average();
    let t0 = Instant::now();
    let mut dump = pg_command("pg_dump", rig.source.port());
    dump.args(["-Fd", "-j", "2", "-f"])
        .arg(&dir)
        .arg(COPY_TEMPLATE);
    common::run(dump).await?;
    let dumped = t0.elapsed();
    let mut restore = pg_command("pg_restore", rig.target.port());
    restore.args(["-j", "2", "-d", "restore_fd"]).arg(&dir);
    common::run(restore).await?;
    let fd = t0.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let rows = restored_rows(rig, "restore_fd").await;
    rig.admin(true, "DROP DATABASE restore_fd").await?;
    let rows = rows?;
    let timed = format!(
        "`pg_dump -Fd -j 2` into a directory ({}), then `pg_restore -j 2` into an empty database ({}): both",
        secs(dumped),
        secs(fd - dumped)
    );
    let method = format!(
        "`pg_dump -Fd -j 2` + `pg_restore -j 2` (dump {}, restore {})",
        secs(dumped),
        secs(fd - dumped)
    );
    for h in &tables {
        let method = if *h == COPY_CREATE {
            "`pg_dump -Fd -j 2` + `pg_restore -j 2`"
        } else {
            &method
        };
        push_row(
            report,
            h,
            Row {
                method,
                timed: &timed,
                took: fd,
                rows,
                load: &load,
                check: "–",
            },
        );
    }
    Ok(())
}

/// After the restart with `wal_level = logical`: `pg_dump -Fc | pg_restore` again, next to
/// native logical replication (copy-create's table only).
pub async fn dump_again(rig: &Rig, report: &mut Report) -> R<()> {
    say!("baseline: pg_dump -Fc | pg_restore at wal_level = logical");
    let load = common::load_average();
    let (took, rows) = dump_fc(rig, "restore_fc_logical").await?;
    say!("baseline: pg_dump -Fc | pg_restore {}", secs(took));
    push_row(
        report,
        COPY_CREATE,
        Row {
            method: "`pg_dump -Fc \\| pg_restore` (`wal_level = logical`)",
            timed: "the same, after both servers were restarted with `wal_level = logical`",
            took,
            rows,
            load: &load,
            check: "–",
        },
    );
    Ok(())
}

/// The row of a tool whose copy took `took` (first setup command → target identical), in
/// `heading`'s table; `load` was read before the tool started.
#[allow(clippy::too_many_arguments)]
pub async fn record(
    rig: &Rig,
    report: &mut Report,
    heading: &str,
    kind: ToolKind,
    tool: &Tool,
    pair: &Pair,
    took: Duration,
    started: Instant,
    load: &str,
) -> R<()> {
    say!("{}: initial copy {}", kind.label(), secs(took));
    let check = rig
        .verify(pair, &format!("{}, initial copy", kind.label()))
        .await?;
    record_check(report, kind, "after the initial copy", &check);
    let rows = count_rows(&pair.dst).await?;
    let ratio = report.copy_baseline.map_or("–".into(), |fc| {
        format!("{:.2}×", took.as_secs_f64() / fc.as_secs_f64())
    });
    let (figure, method) = if heading == COPY_CREATE {
        (
            format!(
                "Initial copy, scale {}, into an empty database",
                rig.args.scale
            ),
            match tool {
                Tool::Pgshift(p) => format!("pgshift, `\"schema\": \"{}\"`", p.schema),
                _ => kind.label().to_string(),
            },
        )
    } else {
        (
            format!("Initial copy, scale {}", rig.args.scale),
            kind.label().to_string(),
        )
    };
    report.figure(
        &figure,
        Better::Lower,
        kind.label(),
        took.as_secs_f64(),
        format!("{} ({ratio} pg_dump)", secs(took)),
    );
    let timed = timed(kind, tool, pair, started);
    push_row(
        report,
        heading,
        Row {
            method: &method,
            timed: &timed,
            took,
            rows,
            load,
            check: &check.cell(),
        },
    );
    Ok(())
}

/// What a tool's time covers, in its own words.
fn timed(kind: ToolKind, tool: &Tool, pair: &Pair, started: Instant) -> String {
    let schema = match pair.schema_loaded {
        Some(d) => format!(
            "target schema loaded beforehand with `pg_dump --schema-only \\| psql` ({}, not counted); ",
            secs(d)
        ),
        None => "empty target database; ".into(),
    };
    let body = match (kind, tool) {
        (_, Tool::Pgshift(p)) => {
            let copied = p
                .copied_at
                .lock()
                .expect("copied_at")
                .map(|at| format!(", every table copied after {}", secs(at - started)))
                .unwrap_or_default();
            let objects = p.objects_seen.lock().expect("objects_seen");
            let built = if objects.is_empty() {
                "no object was ever listed in `objects_pending`".to_string()
            } else {
                format!(
                    "objects built after the copy: {}",
                    objects.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            format!(
                "`pgshift serve` started, clusters and migration created (`\"schema\": \"{}\"`), started → \
                 migration `synced` with every table's `objects_pending` empty{copied} ({built}) → target \
                 aggregates = source's",
                p.schema
            )
        }
        (ToolKind::Native, _) => {
            "`CREATE PUBLICATION … FOR ALL TABLES`, `CREATE SUBSCRIPTION` (copy_data) → \
             every table's `srsubstate` = `r` → target aggregates = source's"
                .into()
        }
        _ => "tool set up → every table `ok` → target aggregates = source's".into(),
    };
    format!("{schema}{body}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(5_000_550), "5,000,550");
        assert_eq!(super::thousands(-12_345), "-12,345");
    }
}
