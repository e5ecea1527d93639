//! Initial copy: the time each tool takes to get a `pgbench -i -s 50` database fully synced,
//! next to `pg_dump -Fc | pg_restore` and `pg_dump -Fd -j 2` + `pg_restore -j 2` of the same
//! data.

use std::time::{Duration, Instant};

use super::{record_check, COPY};
use crate::args::Args;
use crate::common::{self, pg_command, secs, R};
use crate::report::{Better, Report, Table};
use crate::rig::{Rig, COPY_TEMPLATE};
use crate::say;
use crate::tools::{Pair, ToolKind};

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

pub async fn dumps(rig: &Rig, report: &mut Report) -> R<()> {
    let (sport, tport) = (rig.source.port(), rig.target.port());
    say!("baseline: pg_dump -Fc | pg_restore");
    rig.admin(true, "CREATE DATABASE restore_fc").await?;
    rig.checkpoint().await?;
    let t0 = Instant::now();
    let mut dump = pg_command("pg_dump", sport);
    dump.args(["-Fc", COPY_TEMPLATE]);
    let mut restore = pg_command("pg_restore", tport);
    restore.args(["-d", "restore_fc"]);
    common::pipe(dump, restore).await?;
    let fc = t0.elapsed();
    rig.admin(true, "DROP DATABASE restore_fc").await?;
    report.copy_baseline = Some(fc);
    report.table(COPY).rows.push(vec![
        "`pg_dump -Fc \\| pg_restore`".into(),
        secs(fc),
        "1.00×".into(),
        "–".into(),
    ]);

    say!("baseline: pg_dump -Fd -j 2, then pg_restore -j 2");
    let dir = rig.work.join("dump-fd");
    rig.admin(true, "CREATE DATABASE restore_fd").await?;
    rig.checkpoint().await?;
    let t0 = Instant::now();
    let mut dump = pg_command("pg_dump", sport);
    dump.args(["-Fd", "-j", "2", "-f"])
        .arg(&dir)
        .arg(COPY_TEMPLATE);
    common::run(dump).await?;
    let dumped = t0.elapsed();
    let mut restore = pg_command("pg_restore", tport);
    restore.args(["-j", "2", "-d", "restore_fd"]).arg(&dir);
    common::run(restore).await?;
    let fd = t0.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    rig.admin(true, "DROP DATABASE restore_fd").await?;
    report.table(COPY).rows.push(vec![
        format!(
            "`pg_dump -Fd -j 2` + `pg_restore -j 2` (dump {}, restore {})",
            secs(dumped),
            secs(fd - dumped)
        ),
        secs(fd),
        format!("{:.2}×", fd.as_secs_f64() / fc.as_secs_f64()),
        "–".into(),
    ]);
    Ok(())
}

/// The row of a tool whose copy took `took` (first setup command → target identical).
pub async fn record(
    rig: &Rig,
    report: &mut Report,
    kind: ToolKind,
    pair: &Pair,
    took: Duration,
) -> R<()> {
    say!("{}: initial copy {}", kind.label(), secs(took));
    let check = rig
        .verify(pair, &format!("{}, initial copy", kind.label()))
        .await?;
    record_check(report, kind, "after the initial copy", &check);
    let ratio = report.copy_baseline.map_or("–".into(), |fc| {
        format!("{:.2}×", took.as_secs_f64() / fc.as_secs_f64())
    });
    report.figure(
        &format!("Initial copy, scale {}", rig.args.scale),
        Better::Lower,
        kind.label(),
        took.as_secs_f64(),
        format!("{} ({ratio} pg_dump)", secs(took)),
    );
    report.table(COPY).rows.push(vec![
        kind.label().to_string(),
        secs(took),
        ratio,
        check.cell(),
    ]);
    Ok(())
}
