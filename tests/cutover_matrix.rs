//! The cutover's failure points, one by one: the cutover is held at a step by a lock on one
//! side (a writer on the source, or the target's tables and sequences), then the source is
//! killed, the target stopped or pgshift crashed. Whatever happened, once everything is back
//! the two servers end either as before the cutover (the source writable, unfrozen, the target
//! replicating every write) or with the cutover finished, never in between, and the operation
//! and the migration say which.

use std::time::Duration;

use pgshift_tests::cutover::{
    assert_same, freeze_installed, pair, relaxed, stall_apply, start_synced, try_write,
    wait_operation, Pair,
};
use pgshift_tests::migrate::wait_drained;
use pgshift_tests::server::{test_settings, TestServer};
use pgshift_tests::{init_tracing, wait_for};
use serde_json::{json, Value};
use sqlx::{Postgres, Transaction};

/// The step the cutover is held at.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Comparing key ranges before the freeze: the target's "Odd Pair" is locked.
    VerifyRanges,
    /// Freezing: an application transaction on the source holds `item`.
    Freeze,
    /// Draining: the target's `item` is locked with a change waiting for it.
    Drain,
    /// Moving sequences: the target's `invoice_no` is locked.
    Sequences,
    /// Comparing inside the freeze: the target's "Odd Pair" is locked.
    Verify,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::VerifyRanges => "verify_ranges",
            Step::Freeze => "freeze",
            Step::Drain => "drain",
            Step::Sequences => "sequences",
            Step::Verify => "verify",
        }
    }
}

/// What breaks while the cutover is held.
#[derive(Clone, Copy, Debug)]
enum Fault {
    KillSource,
    StopTarget,
    CrashPgshift,
}

const STEPS: [Step; 5] = [
    Step::VerifyRanges,
    Step::Freeze,
    Step::Drain,
    Step::Sequences,
    Step::Verify,
];

async fn lock(pool: &sqlx::PgPool, sql: &str) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(sql).execute(&mut *tx).await.unwrap();
    tx
}

/// Waits until the operation's step `name` is running; `None` when the operation ended first.
async fn at_step(server: &TestServer, id: &str, name: &str) -> Option<()> {
    wait_for(
        &format!("step {name} of operation {id}"),
        Duration::from_secs(60),
        || async {
            let (_, op) = server.get(&format!("/operations/{id}")).await;
            if op["state"] != "running" {
                return Some(None);
            }
            let steps = op["steps"].as_array().cloned().unwrap_or_default();
            steps
                .iter()
                .any(|s| s["name"] == name && s["outcome"] == "running")
                .then_some(Some(()))
        },
    )
    .await
}

/// Starts a cutover of `shop` and holds it at `step`; returns the operation's id and the locks.
async fn held_cutover(
    server: &TestServer,
    pair: &Pair,
    step: Step,
) -> (String, Vec<Transaction<'static, Postgres>>) {
    let mut held = Vec::new();
    match step {
        Step::VerifyRanges => held.push(
            lock(
                &pair.dst,
                "LOCK TABLE \"Odd Pair\" IN ACCESS EXCLUSIVE MODE",
            )
            .await,
        ),
        Step::Freeze => {
            held.push(lock(&pair.src, "INSERT INTO item (writer, n) VALUES (7, 7)").await)
        }
        // Held at the drain first; later steps take their lock there and let the drain end.
        Step::Drain | Step::Sequences | Step::Verify => held.push(stall_apply(pair).await),
    }
    let body = relaxed(json!({
        "checksums": matches!(step, Step::VerifyRanges),
        "timeout_seconds": 600,
    }));
    let (status, started) = server.post("/migrations/shop/cutover", body).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let first = match step {
        Step::Sequences | Step::Verify => "drain",
        s => s.name(),
    };
    at_step(server, &id, first)
        .await
        .unwrap_or_else(|| panic!("the cutover ended before {first}"));
    let later = match step {
        Step::Sequences => Some("ALTER SEQUENCE invoice_no INCREMENT BY 1"),
        Step::Verify => Some("LOCK TABLE \"Odd Pair\" IN ACCESS EXCLUSIVE MODE"),
        _ => None,
    };
    if let Some(sql) = later {
        let next = lock(&pair.dst, sql).await;
        held.pop().unwrap().rollback().await.unwrap();
        held.push(next);
        at_step(server, &id, step.name())
            .await
            .unwrap_or_else(|| panic!("the cutover ended before {}", step.name()));
    }
    (id, held)
}

/// One failure point: the cutover held at `step`, then `fault`; afterwards everything comes
/// back and the servers end as before or cut over, with the records saying which.
async fn one(step: Step, fault: Fault) {
    tracing::info!(?step, ?fault, "failure point");
    let pair = pair(100).await;
    let mut server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;
    let (id, held) = held_cutover(&server, &pair, step).await;

    let mut restarted_in = None;
    match fault {
        Fault::KillSource => pair.source.kill9().await,
        Fault::StopTarget => pair.target.stop().await,
        Fault::CrashPgshift => {
            let dir = server.crash();
            server = TestServer::start_in(&dir, test_settings()).await;
            restarted_in = Some(dir);
        }
    }
    drop(held);
    if !matches!(fault, Fault::CrashPgshift) {
        // A step waiting on the side that broke may wait for its timeout: an operator aborts.
        let (_, op) = server.get(&format!("/operations/{id}")).await;
        if op["state"] == "running" {
            server
                .post("/migrations/shop/cutover/abort", json!({}))
                .await;
        }
    }
    let op = wait_operation(&server, &id, Duration::from_secs(120)).await;
    match fault {
        Fault::KillSource => pair.source.start_again().await,
        Fault::StopTarget => pair.target.start_again().await,
        Fault::CrashPgshift => {}
    }
    let src = pair.source.connect("app").await;
    let dst = pair.target.connect("app").await;
    settled(&server, &src, &dst, &op, step, fault).await;
    drop(server);
    if let Some(dir) = restarted_in {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Both servers as before the cutover, or the cutover finished; the records agree.
async fn settled(
    server: &TestServer,
    src: &sqlx::PgPool,
    dst: &sqlx::PgPool,
    op: &Value,
    step: Step,
    fault: Fault,
) {
    let case = format!("{step:?} / {fault:?}: {op}");
    eprintln!(
        "failure point {step:?} / {fault:?}: operation {}, error {}",
        op["state"], op["error"]
    );
    if op["state"] == "succeeded" {
        assert_eq!(
            server.migration("shop").await["state"],
            "cut_over",
            "{case}"
        );
        let error = try_write(src).await.unwrap_err();
        assert!(error.contains("moved this database"), "{case}: {error}");
        assert_same(src, dst).await;
        return;
    }
    assert!(
        op["state"] == "failed" || op["state"] == "aborted",
        "{case}"
    );
    assert!(op["result"]["writes_blocked_seconds"].is_number(), "{case}");
    wait_for(
        &format!("the freeze to be lifted ({step:?} / {fault:?})"),
        Duration::from_secs(120),
        || async { (!freeze_installed(src).await).then_some(()) },
    )
    .await;
    try_write(src)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    sqlx::query("INSERT INTO \"Odd Pair\" VALUES (-1, 'probe', '{}')")
        .execute(src)
        .await
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let m = wait_drained(server, "shop", src, Duration::from_secs(180)).await;
    assert!(m["error"].is_null(), "{case}: {m}");
    assert_same(src, dst).await;
}

async fn every_step(fault: Fault) {
    init_tracing();
    for step in STEPS {
        one(step, fault).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_source_killed_at_each_step() {
    every_step(Fault::KillSource).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_target_stopped_at_each_step() {
    every_step(Fault::StopTarget).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgshift_crashed_at_each_step() {
    every_step(Fault::CrashPgshift).await;
}
