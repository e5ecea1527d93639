//! Cutover: pgbench writes to the source; the script blocks writes (a transaction holding
//! `LOCK TABLE … IN EXCLUSIVE MODE` on every table: readers go on, writers wait), then runs the
//! tool's cutover until the target has every change and replication is stopped. The figure is
//! the time writes stayed blocked before the application could move to the target.

use std::time::Duration;
use std::time::Instant;

use super::{record_check, CUTOVER};
use crate::args::Args;
use crate::check::TABLES;
use crate::common::{secs, Ctx, R};
use crate::report::{Better, Report, Table};
use crate::rig::Rig;
use crate::say;
use crate::tools::{Pair, Tool, ToolKind};

pub fn table(a: &Args) -> Table {
    let mut t = Table::new(
        CUTOVER,
        format!(
            "After the bulk changes, on the same database: `pgbench -c {} -j {}` writes to the source; after {} s \
             the script blocks writes (a transaction holding `LOCK TABLE {} IN EXCLUSIVE MODE` until the end) and \
             runs the tool's cutover procedure, timed step by step. **Writes blocked**: from the lock until the \
             target has every change, sequences are set and replication is stopped, so the application could \
             write to the target. Then pgbench is stopped, the lock released, and every row compared.",
            a.clients,
            a.threads(),
            warmup(a).as_secs(),
            TABLES
                .iter()
                .map(|(t, _)| *t)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        &["Tool", "writes blocked", "steps", "target = source"],
    );
    t.notes.push(
        "pgshift blocks writes itself (`POST /api/v1/migrations/{name}/cutover`: the script takes no lock for \
         it); its figure is the window pgshift measures from the freeze to the finish, and its steps include \
         the preflight gates, which run before writes are blocked."
            .into(),
    );
    t
}

/// How long pgbench writes before the cutover starts.
fn warmup(a: &Args) -> Duration {
    Duration::from_secs(u64::from(a.seconds / 2).clamp(3, 15))
}

pub async fn measure(
    rig: &Rig,
    report: &mut Report,
    kind: ToolKind,
    tool: &mut Tool,
    pair: &Pair,
) -> R<()> {
    let label = kind.label();
    let a = &rig.args;
    let (c, j) = (a.clients.to_string(), a.threads().to_string());
    // pgbench runs until stopped; -T only bounds it if the benchmark dies.
    let limit = (warmup(a).as_secs() + 3600).to_string();
    say!("{label}: cutover under pgbench load");
    let mut pgbench = rig
        .source
        .spawn_pgbench(&["-c", &c, "-j", &j, "-T", &limit, &pair.db]);
    // The load runs for a set time before the cutover: nothing to await.
    tokio::time::sleep(warmup(a)).await;
    if let Ok(Some(status)) = pgbench.try_wait() {
        return Err(format!("pgbench exited before the cutover ({status})"));
    }

    // pgshift freezes the source itself; for the others the script blocks writes, as their
    // documented procedures ask the operator to.
    let lock = if tool.freezes_itself() {
        None
    } else {
        let mut lock = pair.src.begin().await.ctx(|| "BEGIN".into())?;
        let tables: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
        sqlx::query(&format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            tables.join(", ")
        ))
        .execute(&mut *lock)
        .await
        .ctx(|| "blocking writes (LOCK TABLE)".into())?;
        Some(lock)
    };
    let blocked = Instant::now();
    say!("  writes blocked");
    let outcome = tool.cutover(pair).await;
    let mut total = blocked.elapsed();

    // No write may reach the source after the cutover: pgbench goes before the lock does.
    let _ = pgbench.start_kill();
    let _ = pgbench.wait().await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'pgbench'",
    )
    .execute(&pair.src)
    .await
    .ctx(|| "ending pgbench's sessions".into())?;
    if let Some(lock) = lock {
        lock.rollback().await.ctx(|| "releasing the lock".into())?;
    }

    let cutover = outcome?;
    if let Some(measured) = cutover.as_ref().and_then(|c| c.writes_blocked) {
        total = measured;
    }
    if cutover.is_none() {
        // The tool still replicates: let it deliver the last changes before comparing.
        rig.wait_identical(
            pair,
            Instant::now(),
            Duration::from_millis(100),
            &tool.log_hint(),
        )
        .await?;
    }
    let check = rig.verify(pair, &format!("{label}, cutover")).await?;
    record_check(report, kind, "after the cutover", &check);
    let row = match cutover {
        Some(c) => {
            say!("  writes blocked for {}", secs(total));
            let steps: Vec<String> = c
                .steps
                .iter()
                .map(|(s, d)| format!("{s}: {}", secs(*d)))
                .collect();
            report.figure(
                "Cutover: writes blocked",
                Better::Lower,
                label,
                total.as_secs_f64(),
                secs(total),
            );
            report
                .table(CUTOVER)
                .notes
                .push(format!("{label}: {}", c.procedure));
            vec![
                label.to_string(),
                format!("**{}**", secs(total)),
                steps.join("; "),
                check.cell(),
            ]
        }
        None => vec![
            label.to_string(),
            "no cutover procedure".into(),
            "–".into(),
            check.cell(),
        ],
    };
    report.table(CUTOVER).rows.push(row);
    Ok(())
}
