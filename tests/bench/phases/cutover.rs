//! Figure 6: cutovers under load. pgbench writes to the current source right up to each cutover;
//! every cutover arms the reverse migration, so the next one moves the database back, and ten
//! of them alternate between the two servers. Per cutover: how long writes were blocked (from
//! the freeze's first lock request to the finish, as pgshift records it, and each step's share),
//! pgbench's committed transactions against `pgbench_history` on both sides, and an exact
//! comparison of the two databases with the old one frozen and the new one not yet written.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::PgPool;

use crate::bench::{Bench, MIGRATION};
use crate::check;
use crate::common::{secs, Ctx, Percentiles, R};
use crate::report::Status;
use crate::say;

/// Cutovers in the figure.
pub const CUTOVERS: usize = 10;

/// One cutover's outcome.
struct Round {
    from: &'static str,
    blocked: f64,
    /// pgbench's own count of transactions it completed in this round.
    pgbench_done: i64,
    /// `pgbench_history` rows added on the old side during the round (one per committed
    /// pgbench transaction), after pgbench had stopped on the freeze.
    old_added: i64,
    /// The same on the new side once the cutover finished.
    new_added: i64,
    identical: bool,
    /// Seconds spent in each step inside the blocked window, in [`BLOCKED_STEPS`] order.
    steps: Vec<f64>,
}

/// The steps between the freeze's first lock request and the end of the cutover.
const BLOCKED_STEPS: [&str; 5] = ["freeze", "drain", "sequences", "verify", "finish"];

/// How long each of [`BLOCKED_STEPS`] took, from the operation's recorded start and end times.
fn step_seconds(op: &Value) -> Vec<f64> {
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    BLOCKED_STEPS
        .iter()
        .map(|name| {
            op["steps"]
                .as_array()
                .and_then(|steps| steps.iter().find(|s| s["name"] == *name))
                .and_then(|s| Some((time(&s["started_at"])?, time(&s["finished_at"])?)))
                .map_or(f64::NAN, |(a, b)| {
                    (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6
                })
        })
        .collect()
}

async fn history_rows(pool: &PgPool) -> R<i64> {
    sqlx::query_scalar("SELECT count(*) FROM pgbench_history")
        .fetch_one(pool)
        .await
        .ctx(|| "counting pgbench_history".into())
}

fn processed(stdout: &str) -> i64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Bench {
    async fn operation(&self, id: &str) -> R<Value> {
        let started = Instant::now();
        loop {
            let (code, op) = self.server.get(&format!("/operations/{id}")).await;
            if code != StatusCode::OK {
                return Err(format!("GET /operations/{id} answered {code}: {op}"));
            }
            if op["state"] != "running" {
                return Ok(op);
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(format!("operation {id} still running after 300 s: {op}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_migration_synced(&self, name: &str) -> R<()> {
        let started = Instant::now();
        loop {
            let (_, m) = self.server.get(&format!("/migrations/{name}")).await;
            if m["state"] == "synced" && m["lag_seconds"].is_number() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err(format!("migration {name} not synced after 300 s: {m}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ten cutovers under pgbench load, alternating direction through reverse migrations.
    pub async fn cutovers(&self) -> R<()> {
        let (c, j) = (
            self.args.clients.to_string(),
            self.args.threads().to_string(),
        );
        let mut migration = MIGRATION.to_string();
        let mut rounds = Vec::new();
        for round in 1..=CUTOVERS {
            let forward = round % 2 == 1;
            let (from, cluster, old, new) = if forward {
                ("source", &self.source, &self.src, &self.dst)
            } else {
                ("target", &self.target, &self.dst, &self.src)
            };
            self.wait_migration_synced(&migration).await?;
            let (old_before, new_before) = (history_rows(old).await?, history_rows(new).await?);
            say!("cutover {round}/{CUTOVERS}: pgbench -c {c} -j {j} on the {from}, then cutover of {migration}");
            // -T bounds a run that the freeze failed to stop; the freeze normally ends it.
            let child = cluster.spawn_pgbench(&["-n", "-c", &c, "-j", &j, "-T", "300", "bench"]);
            // Let the load settle: a few seconds of writes before the cutover.
            let settle = Instant::now();
            while history_rows(old).await? < old_before + 2_000
                && settle.elapsed() < Duration::from_secs(10)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let next = format!("{MIGRATION}-back-{round}");
            let (code, op) = self
                .server
                .post(
                    &format!("/migrations/{migration}/cutover"),
                    json!({"reverse": true, "reverse_name": next, "checksums": false}),
                )
                .await;
            if code != StatusCode::ACCEPTED {
                return Err(format!("cutover of {migration} answered {code}: {op}"));
            }
            let op = self
                .operation(op["id"].as_str().unwrap_or_default())
                .await?;
            if op["state"] != "succeeded" {
                return Err(format!(
                    "cutover {round} of {migration} did not succeed: {op}"
                ));
            }
            let new_added = history_rows(new).await? - new_before;
            let out = tokio::time::timeout(Duration::from_secs(330), child.wait_with_output())
                .await
                .map_err(|_| "pgbench did not stop after the freeze".to_string())?
                .ctx(|| "waiting for pgbench".into())?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            if !stderr.contains("is frozen") {
                self.rep().problem(format!(
                    "cutover {round}: pgbench's clients did not report the freeze error: {}",
                    stderr.lines().last().unwrap_or_default()
                ));
            }
            let old_added = history_rows(old).await? - old_before;
            let diffs = check::compare(&self.src, &self.dst).await?;
            let blocked = op["result"]["writes_blocked_seconds"]
                .as_f64()
                .unwrap_or(f64::NAN);
            say!(
                "cutover {round}: writes blocked {blocked:.3} s; {old_added} transactions on the old side, {new_added} on the new"
            );
            if !diffs.is_empty() {
                self.rep()
                    .mismatch(format!("after cutover {round}:\n{}", diffs.join("\n")));
            }
            rounds.push(Round {
                from,
                blocked,
                pgbench_done: processed(&stdout),
                old_added,
                new_added,
                identical: diffs.is_empty(),
                steps: step_seconds(&op),
            });
            migration = next;
        }
        self.report_cutovers(&rounds);
        Ok(())
    }

    fn report_cutovers(&self, rounds: &[Round]) {
        let blocked: Vec<f64> = rounds.iter().map(|r| r.blocked).collect();
        let p = Percentiles::of(&blocked);
        let lost: i64 = rounds
            .iter()
            .map(|r| (r.old_added - r.new_added).max(0))
            .sum();
        let extra: i64 = rounds
            .iter()
            .map(|r| (r.new_added - r.old_added).max(0))
            .sum();
        let unacknowledged: i64 = rounds
            .iter()
            .map(|r| (r.pgbench_done - r.old_added).max(0))
            .sum();
        let identical = rounds.iter().all(|r| r.identical);
        let mut r = self.rep();
        if let Some(p) = &p {
            let median = p.p50;
            r.figure(
                "6. Writes blocked per cutover under pgbench load (median / max over 10)",
                format!("{:.3} s / {:.3} s", median, p.max),
                "< 1 s / < 2 s",
                Status::of(median < 1.0 && p.max < 2.0),
            );
        }
        r.figure(
            "6. Committed pgbench transactions lost / applied on the old server after the freeze",
            format!(
                "{lost} / {extra}; pgbench-acknowledged transactions missing: {unacknowledged}"
            ),
            "0 / 0",
            Status::of(lost == 0 && extra == 0 && unacknowledged == 0),
        );
        r.figure(
            "6. Target identical to the source at the freeze point",
            if identical {
                "yes, all 10".into()
            } else {
                "**no**".into()
            },
            "yes",
            Status::of(identical),
        );
        let mut table = String::from(
            "| # | from | writes blocked | freeze | drain | sequences | verify | finish | pgbench transactions (its count) | on the old side | on the new side | identical |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (i, x) in rounds.iter().enumerate() {
            let steps: Vec<String> = x.steps.iter().map(|s| format!("{s:.3} s")).collect();
            table.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                i + 1,
                x.from,
                secs(Duration::from_secs_f64(x.blocked.max(0.0))),
                steps.join(" | "),
                x.pgbench_done,
                x.old_added,
                x.new_added,
                if x.identical { "yes" } else { "**no**" }
            ));
        }
        r.section(
            "6. Cutovers under load",
            format!(
                "`pgbench -n -c {} -j {}` writes to the current source until the cutover's freeze makes its \
                 clients fail; each cutover (`POST /migrations/{{name}}/cutover` with `reverse: true`) arms the \
                 reverse migration, so the next cutover moves the database back: {CUTOVERS} cutovers alternate \
                 between the two servers. *Writes blocked* is pgshift's own figure: from the freeze's first lock \
                 request to the end of the finish step (freeze, final tick and drain, sequences, row-count \
                 verification, stopping the migration and starting the reverse one; the gates and the arming of \
                 the reverse migration run before). The freeze errors pgbench's \
                 clients get are expected and left out of the server-log problems below. Transactions are counted as `pgbench_history` rows \
                 (one per committed pgbench transaction) added on each side during the round, after pgbench \
                 stopped; the comparison covers every table, row by row.\n\n{table}",
                self.args.clients,
                self.args.threads()
            ),
        );
    }
}
