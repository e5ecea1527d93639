//! Figure 6: cutovers under load. pgbench writes to the current source right up to each cutover;
//! every cutover arms the reverse migration, so the next one moves the database back, and the
//! `--cutovers` of them (20 by default) alternate between the two servers. Per cutover: how long
//! writes were blocked (from the freeze's first lock request until writes went elsewhere or came
//! back, as pgshift records it for every outcome, and each step's share), pgbench's committed
//! transactions against `pgbench_history` on both sides, which freeze message pgbench's clients
//! got, and an exact comparison of the two databases with the old one frozen and the new one not
//! yet written. A cutover that fails is counted and reported with its error, and the next one
//! starts from the same migration once it is synced again.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::PgPool;

use crate::bench::{Bench, MIGRATION};
use crate::check;
use crate::common::{secs, Ctx, Percentiles, R};
use crate::report::Status;
use crate::say;

/// One cutover's outcome.
struct Round {
    from: &'static str,
    migration: String,
    /// `None` when the cutover succeeded; else what failed (the operation's state and error, or
    /// the refused request).
    failure: Option<String>,
    /// The operation's `writes_blocked_seconds` (0 when it stopped before the freeze began,
    /// NaN when it reported none).
    blocked: f64,
    /// pgbench's own count of transactions it completed in this round (`None` when it had to be
    /// killed and printed no summary).
    pgbench_done: Option<i64>,
    /// `pgbench_history` rows added on the old side during the round (one per committed
    /// pgbench transaction), after pgbench had stopped on the freeze.
    old_added: i64,
    /// The same on the new side once the cutover finished (after a failed cutover: once the
    /// migration, still running from the old side, had caught up).
    new_added: i64,
    identical: bool,
    /// Seconds spent in each step inside the blocked window, in [`BLOCKED_STEPS`] order.
    steps: Vec<f64>,
    /// pgbench's client errors, by kind.
    errors: ClientErrors,
}

impl Round {
    /// Whether writes were blocked at all: the freeze began.
    fn froze(&self) -> bool {
        self.blocked.is_finite() && self.blocked > 0.0
    }
}

/// The errors pgbench's clients stopped on (`ERROR:` lines of its stderr).
#[derive(Default)]
struct ClientErrors {
    /// The freeze while the cutover runs: "… is frozen: … cutover in progress …".
    in_progress: usize,
    /// The permanent freeze after the finish: "… is frozen: … moved this database …".
    moved: usize,
    /// Anything else (the first one kept).
    other: usize,
    first_other: Option<String>,
}

impl ClientErrors {
    fn of(stderr: &str) -> Self {
        let mut e = ClientErrors::default();
        for line in stderr.lines().filter(|l| l.contains("ERROR:")) {
            if line.contains("is frozen") && line.contains("cutover in progress") {
                e.in_progress += 1;
            } else if line.contains("is frozen") && line.contains("moved this database") {
                e.moved += 1;
            } else {
                e.other += 1;
                e.first_other
                    .get_or_insert_with(|| line.chars().take(300).collect());
            }
        }
        e
    }

    fn frozen(&self) -> usize {
        self.in_progress + self.moved
    }

    fn cell(&self) -> String {
        let mut parts = Vec::new();
        if self.in_progress > 0 {
            parts.push(format!("{} in progress", self.in_progress));
        }
        if self.moved > 0 {
            parts.push(format!("{} moved", self.moved));
        }
        if self.other > 0 {
            parts.push(format!("**{} other**", self.other));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// The steps between the freeze's first lock request and the end of the cutover.
const BLOCKED_STEPS: [&str; 5] = ["freeze", "drain", "sequences", "verify", "finish"];

/// How long each of [`BLOCKED_STEPS`] took, from the operation's recorded start and end times
/// (NaN for a step that did not run).
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

fn seconds_cell(s: f64) -> String {
    if s.is_finite() {
        format!("{s:.3} s")
    } else {
        "–".into()
    }
}

async fn history_rows(pool: &PgPool) -> R<i64> {
    sqlx::query_scalar("SELECT count(*) FROM pgbench_history")
        .fetch_one(pool)
        .await
        .ctx(|| "counting pgbench_history".into())
}

/// Waits until `new` has what `old` holds (pgbench's tables; `old` is idle by now): up to 300 s.
async fn caught_up(old: &PgPool, new: &PgPool) -> R<()> {
    let want = (check::history(old).await?, check::accounts(old).await?);
    let started = Instant::now();
    loop {
        let have = (check::history(new).await?, check::accounts(new).await?);
        if have == want {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "the new side did not catch up with the old one within 300 s: pgbench_history (max id, count) and pgbench_accounts (sum, count) {want:?} on the old side, {have:?} on the new"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn processed(stdout: &str) -> Option<i64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
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

    /// `--cutovers` cutovers under pgbench load, alternating direction through reverse
    /// migrations. The figures are reported also when a round cannot go on.
    pub async fn cutovers(&self) -> R<()> {
        let mut rounds = Vec::new();
        let mut request = Value::Null;
        let outcome = self.cutover_rounds(&mut rounds, &mut request).await;
        self.report_cutovers(&rounds, &request);
        outcome
    }

    async fn cutover_rounds(&self, rounds: &mut Vec<Round>, request: &mut Value) -> R<()> {
        let total = self.args.cutovers;
        let (c, j) = (
            self.args.clients.to_string(),
            self.args.threads().to_string(),
        );
        let mut migration = MIGRATION.to_string();
        // Whether the current migration runs from the source cluster to the target one.
        let mut forward = true;
        for round in 1..=total {
            let (from, cluster, old, new) = if forward {
                ("source", &self.source, &self.src, &self.dst)
            } else {
                ("target", &self.target, &self.dst, &self.src)
            };
            self.wait_migration_synced(&migration).await?;
            let (old_before, new_before) = (history_rows(old).await?, history_rows(new).await?);
            say!("cutover {round}/{total}: pgbench -c {c} -j {j} on the {from}, then cutover of {migration}");
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
            let (code, answer) = self
                .server
                .post(
                    &format!("/migrations/{migration}/cutover"),
                    json!({"reverse": true, "reverse_name": next, "checksums": false}),
                )
                .await;
            let op = if code == StatusCode::ACCEPTED {
                self.operation(answer["id"].as_str().unwrap_or_default())
                    .await?
            } else {
                json!({"state": "refused", "error": format!("the request answered {code}: {answer}")})
            };
            if request.is_null() && !op["request"].is_null() {
                *request = op["request"].clone();
            }
            let failure = (op["state"] != "succeeded").then(|| {
                format!(
                    "{}: {}",
                    op["state"].as_str().unwrap_or("?"),
                    op["error"].as_str().unwrap_or("(no error given)")
                )
            });
            let blocked = op["result"]["writes_blocked_seconds"].as_f64().unwrap_or(
                if code == StatusCode::ACCEPTED {
                    f64::NAN
                } else {
                    0.0
                },
            );
            // After a success the new side is complete now and nobody writes it yet; after a
            // failure the old side takes writes again, so the count waits for pgbench to stop.
            let new_added_now = if failure.is_none() {
                Some(history_rows(new).await? - new_before)
            } else {
                None
            };
            let wait = if failure.is_none() { 330 } else { 15 };
            let out = match tokio::time::timeout(
                Duration::from_secs(wait),
                child.wait_with_output(),
            )
            .await
            {
                Ok(out) => out.ctx(|| "waiting for pgbench".into())?,
                Err(_) if failure.is_some() => {
                    // Some clients never met the freeze: stop pgbench (the timeout dropped
                    // the child, which kills it). It prints no summary then.
                    say!("cutover {round}: pgbench still running {wait} s after the failed cutover; killed it");
                    std::process::Output {
                        status: std::process::ExitStatus::default(),
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                    }
                }
                Err(_) => return Err("pgbench did not stop after the freeze".into()),
            };
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let errors = ClientErrors::of(&stderr);
            if failure.is_none() && errors.frozen() == 0 {
                self.rep().problem(format!(
                    "cutover {round}: pgbench's clients did not report the freeze error: {}",
                    stderr.lines().last().unwrap_or_default()
                ));
            }
            if let Some(line) = &errors.first_other {
                self.rep().problem(format!(
                    "cutover {round}: {} pgbench client error(s) other than the freeze, first: {line}",
                    errors.other
                ));
            }
            let old_added = history_rows(old).await? - old_before;
            let new_added = match new_added_now {
                Some(n) => n,
                None => {
                    // The migration still runs from the old side: wait until it has applied
                    // what pgbench committed there before and after the failed cutover.
                    if let Err(e) = caught_up(old, new).await {
                        self.rep()
                            .problem(format!("cutover {round}: after the failure, {e}"));
                    }
                    history_rows(new).await? - new_before
                }
            };
            let diffs = check::compare(&self.src, &self.dst).await?;
            match &failure {
                None => say!(
                    "cutover {round}: writes blocked {blocked:.3} s; {old_added} transactions on the old side, {new_added} on the new"
                ),
                Some(f) => say!(
                    "cutover {round} FAILED ({f}); writes blocked {blocked:.3} s; {old_added} transactions on the old side, {new_added} on the new once caught up"
                ),
            }
            if !diffs.is_empty() {
                self.rep()
                    .mismatch(format!("after cutover {round}:\n{}", diffs.join("\n")));
            }
            let still_frozen = op["result"]["source_still_frozen"] == true;
            rounds.push(Round {
                from,
                migration: migration.clone(),
                failure,
                blocked,
                pgbench_done: processed(&stdout),
                old_added,
                new_added,
                identical: diffs.is_empty(),
                steps: step_seconds(&op),
                errors,
            });
            if still_frozen {
                return Err(format!(
                    "cutover {round} of {migration} left the source frozen: {}",
                    op["error"]
                ));
            }
            if rounds.last().is_some_and(|r| r.failure.is_none()) {
                migration = next;
                forward = !forward;
            }
        }
        Ok(())
    }

    fn report_cutovers(&self, rounds: &[Round], request: &Value) {
        if rounds.is_empty() {
            return;
        }
        let n = rounds.len();
        let failed: Vec<(usize, &Round)> = rounds
            .iter()
            .enumerate()
            .filter(|(_, r)| r.failure.is_some())
            .map(|(i, r)| (i + 1, r))
            .collect();
        let froze: Vec<&Round> = rounds.iter().filter(|r| r.froze()).collect();
        let froze_failed = froze.iter().filter(|r| r.failure.is_some()).count();
        let blocked: Vec<f64> = froze.iter().map(|r| r.blocked).collect();
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
            .filter_map(|r| Some((r.pgbench_done? - r.old_added).max(0)))
            .sum();
        let uncounted = rounds.iter().filter(|r| r.pgbench_done.is_none()).count();
        let not_identical: Vec<String> = rounds
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.identical)
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        let mut r = self.rep();
        if let Some(p) = &p {
            let over = if froze_failed > 0 {
                format!("over {} cutovers, {froze_failed} of them failed", p.count)
            } else {
                format!("over {}", p.count)
            };
            r.figure(
                &format!(
                    "6. Writes blocked per cutover under pgbench load (p50 / p95 / max {over})"
                ),
                format!("{:.3} s / {:.3} s / {:.3} s", p.p50, p.p95, p.max),
                "p50 < 1 s, max < 2 s",
                Status::of(p.p50 < 1.0 && p.max < 2.0),
            );
        }
        r.figure(
            "6. Cutovers that failed",
            if failed.is_empty() {
                format!("0 of {n}")
            } else {
                format!("{} of {n} (rounds {})", failed.len(), {
                    let l: Vec<String> = failed.iter().map(|(i, _)| i.to_string()).collect();
                    l.join(", ")
                })
            },
            "0",
            Status::of(failed.is_empty()),
        );
        r.figure(
            "6. Committed pgbench transactions lost / applied on the old server after the freeze",
            format!(
                "{lost} / {extra}; pgbench-acknowledged transactions missing: {unacknowledged}{}",
                if uncounted > 0 {
                    format!(" ({uncounted} round(s) without pgbench's count)")
                } else {
                    String::new()
                }
            ),
            "0 / 0",
            Status::of(lost == 0 && extra == 0 && unacknowledged == 0),
        );
        r.figure(
            "6. Target identical to the source at the freeze point",
            if not_identical.is_empty() {
                format!("yes, all {n}")
            } else {
                format!("**no**, after round(s) {}", not_identical.join(", "))
            },
            "yes",
            Status::of(not_identical.is_empty()),
        );
        let mut table = String::from(
            "| # | from | outcome | writes blocked | freeze | drain | sequences | verify | finish | pgbench transactions (its count) | on the old side | on the new side | pgbench clients stopped by | identical |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (i, x) in rounds.iter().enumerate() {
            let steps: Vec<String> = x.steps.iter().map(|s| seconds_cell(*s)).collect();
            table.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                i + 1,
                x.from,
                if x.failure.is_none() {
                    "done"
                } else {
                    "**failed**"
                },
                if x.blocked.is_finite() {
                    secs(Duration::from_secs_f64(x.blocked.max(0.0)))
                } else {
                    "not reported".into()
                },
                steps.join(" | "),
                x.pgbench_done
                    .map_or_else(|| "– (killed)".into(), |d| d.to_string()),
                x.old_added,
                x.new_added,
                x.errors.cell(),
                if x.identical { "yes" } else { "**no**" }
            ));
        }
        let mut failures = String::new();
        if failed.is_empty() {
            failures.push_str(&format!("Every one of the {n} cutovers succeeded.\n"));
        } else {
            failures.push_str(&format!(
                "{} of the {n} cutovers failed; the migration went on from the same side, and the next round \
                 started again from it once it was synced (a failed round counts its transactions once \
                 the migration had caught up):\n\n",
                failed.len()
            ));
            for (i, x) in &failed {
                failures.push_str(&format!(
                    "- round {i} (`{}`, from the {}, writes blocked {}): {}\n",
                    x.migration,
                    x.from,
                    seconds_cell(x.blocked),
                    x.failure.as_deref().unwrap_or_default()
                ));
            }
        }
        let never_froze = n - froze.len();
        let percentiles = format!(
            "p50 / p95 / max are nearest-rank (with 20 values, p95 is the second-highest) over the {} \
             cutover(s) whose freeze began{}{}.",
            froze.len(),
            if froze_failed > 0 {
                format!(", {froze_failed} failed one(s) included: their writes were blocked until the freeze was lifted")
            } else {
                String::new()
            },
            if never_froze > 0 {
                format!("; {never_froze} stopped before any freeze and are left out")
            } else {
                String::new()
            }
        );
        let request = if request.is_null() {
            String::new()
        } else {
            format!(" The first cutover's operation recorded its request as `{request}` (defaults filled in).")
        };
        r.section(
            "6. Cutovers under load",
            format!(
                "`pgbench -n -c {} -j {}` writes to the current source until the cutover's freeze makes its \
                 clients fail; each cutover (`POST /migrations/{{name}}/cutover` with `reverse: true` and \
                 `checksums: false`, i.e. row counts inside the freeze rather than the default content \
                 verification, whose cost `verify-cost.md` measures) arms the reverse migration, so the next \
                 cutover moves the database back: {n} cutovers alternate between the two servers.{request} \
                 *Writes blocked* is pgshift's own figure (`writes_blocked_seconds`, reported for every \
                 outcome): from the freeze's first lock request to the end of the finish step (freeze, final \
                 tick and drain, sequences, row-count verification, stopping the migration and starting the \
                 reverse one; the gates and the arming of the reverse migration run before), or, for a failed \
                 cutover, until the freeze was lifted. {percentiles} The freeze errors pgbench's clients get \
                 are expected and left out of the server-log problems below; the column *pgbench clients \
                 stopped by* counts them by message: *in progress* is the freeze while the cutover runs \
                 (\"… is frozen: pgshift migration … is cutting over …: cutover in progress\"), *moved* the \
                 permanent one after the finish (\"… moved this database …\"). Transactions are counted as \
                 `pgbench_history` rows (one per committed pgbench transaction) added on each side during the \
                 round, after pgbench stopped; the comparison covers every table, row by row.\n\n{table}\n{failures}",
                self.args.clients,
                self.args.threads()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_by_freeze_message() {
        let stderr = "\
pgbench: error: client 1 script 0 aborted in command 5 query 0: ERROR:  public.pgbench_tellers is frozen: pgshift migration \"bench\" is cutting over to cluster \"target\": cutover in progress, writes are paused
HINT:  retry shortly: writes resume here if the cutover stops, and go to the new server once it has finished
pgbench: error: client 0 script 0 aborted in command 4 query 0: ERROR:  public.pgbench_accounts is frozen: pgshift migration \"bench\" moved this database to cluster \"target\" (127.0.0.1:5433, database \"bench\"); write there
pgbench: error: client 2 script 0 aborted in command 6 query 0: ERROR:  deadlock detected
pgbench: error: Run was aborted; the above results are incomplete.
";
        let e = ClientErrors::of(stderr);
        assert_eq!((e.in_progress, e.moved, e.other, e.frozen()), (1, 1, 1, 2));
        assert!(e.first_other.unwrap().contains("deadlock detected"));
        assert_eq!(ClientErrors::of("").cell(), "none");
        assert_eq!(
            ClientErrors::of(stderr.lines().next().unwrap()).cell(),
            "1 in progress"
        );
    }

    #[test]
    fn pgbench_count_only_when_it_printed_one() {
        assert_eq!(
            processed("number of transactions actually processed: 2170\nlatency average = 1 ms"),
            Some(2170)
        );
        assert_eq!(
            processed("number of transactions actually processed: 35/40000\n"),
            Some(35)
        );
        assert_eq!(processed(""), None);
    }
}
