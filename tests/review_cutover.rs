//! Review of the cutover (2026-12): attempts to make it lose a committed write, leave
//! production frozen, or let a write through the freeze that the target never gets. Each test
//! marked `#[ignore = "defect: …"]` fails on the code it was written against; run them with
//! `cargo test -p pgshift-tests --test review_cutover -- --ignored`.

use std::time::{Duration, Instant};

use pgshift::config::ServeConfig;
use pgshift_tests::cutover::{
    assert_same, cutover, freeze_installed, pair, relaxed, stall_apply, start_synced, step,
    try_write, wait_operation, wait_step, Pair,
};
use pgshift_tests::server::TestServer;
use pgshift_tests::{init_tracing, wait_for};
use serde_json::{json, Value};
use sqlx::PgPool;

/// One keyring for every instance sharing a metadata store (each would otherwise make its own,
/// and could not read the cluster DSNs the other stored).
const KEYRING: &str = "review:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A server on the PostgreSQL metadata store `meta`, with the shared keyring.
async fn on_shared_store(meta: &str) -> TestServer {
    let meta = meta.to_string();
    TestServer::start_configured(move |c: &mut ServeConfig| {
        c.metadata = Some(meta);
        c.secret_keys = Some(KEYRING.into());
    })
    .await
}

/// Sets `item.note` of row `id` on `pool`; `Err` holds the error text.
async fn write_note(pool: &PgPool, id: i64, note: &str) -> Result<(), String> {
    sqlx::query("UPDATE item SET note = $2 WHERE id = $1")
        .bind(id)
        .bind(note)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn note_of(pool: &PgPool, id: i64) -> Option<String> {
    sqlx::query_scalar("SELECT note FROM item WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Tries, for at most `window`, to write `note` into row `id` of the old server; returns
/// whether a write went through. (A bounded observation, not a speed requirement: pgshift's
/// retry back-off in the tests is 2 s.)
async fn old_server_takes_a_write(pool: &PgPool, id: i64, note: &str, window: Duration) -> bool {
    let until = Instant::now() + window;
    while Instant::now() < until {
        if write_note(pool, id, note).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Holds a row lock on the migration's row in the metadata store: the cutover's finish waits
/// in its `UPDATE … SET desired_state` (after the source's freeze was made permanent).
async fn hold_migration_row(
    meta: &PgPool,
    name: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = meta.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM pgshift_meta.migration WHERE name = $1 FOR UPDATE")
        .bind(name)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Waits until the finish is blocked recording the cut-over state; returns that session's pid.
async fn wait_finish_blocked_in_store(meta: &PgPool) -> i32 {
    wait_for(
        "the finish to wait on the metadata store",
        Duration::from_secs(120),
        || async {
            sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'
                    AND query LIKE '%SET desired_state%'",
            )
            .fetch_optional(meta)
            .await
            .unwrap()
        },
    )
    .await
}

/// Starts a cutover of `shop` that stalls in its drain (the target's `item` is locked by the
/// returned transaction) and waits until the drain runs. Returns the operation's id.
async fn stalled_cutover(
    server: &TestServer,
    pair: &Pair,
    body: Value,
) -> (String, sqlx::Transaction<'static, sqlx::Postgres>) {
    let stall = stall_apply(pair).await;
    let mut body = relaxed(body);
    body["timeout_seconds"] = json!(600);
    let (status, started) = server.post("/migrations/shop/cutover", body).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    wait_step(server, &id, "drain").await;
    (id, stall)
}

/// Two pgshift processes on one PostgreSQL metadata store (as tests/store.rs runs them). Both
/// resume the running migration at start; the second one's run waits behind the first's run
/// lock, retrying. The first cuts the migration over: its finish stops its own run, and closes
/// the cutover's source connection (which held the cutover's advisory lock). The second's next
/// attempt then takes the run lock, finds no cutover holding the freeze, and `lift_left` drops
/// the permanent freeze of a cut-over migration: the old server takes writes again, and the
/// second process goes on replicating them into the new server, over what the application
/// wrote there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_lifts_the_permanent_freeze_after_the_cutover() {
    init_tracing();
    let pair = pair(100).await;
    pair.source.create_database("meta").await;
    let meta = pair.source.dsn("meta");
    let a = on_shared_store(&meta).await;
    start_synced(&a, &pair, "shop").await;
    let b = on_shared_store(&meta).await;
    // B resumed the migration too; its run waits for A's.
    wait_for(
        "the second process's run to wait behind the first's",
        Duration::from_secs(60),
        || async {
            let m = b.migration("shop").await;
            m["error"]
                .as_str()
                .is_some_and(|e| e.contains("another pgshift process"))
                .then_some(())
        },
    )
    .await;

    let op = cutover(&a, "shop", relaxed(json!({}))).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_same(&pair.src, &pair.dst).await;
    let error = try_write(&pair.src).await.unwrap_err();
    assert!(error.contains("moved this database"), "{error}");

    // The application now writes to the new server; a client left behind still tries the old.
    write_note(&pair.dst, 1, "written on the new server")
        .await
        .unwrap();
    let leaked = old_server_takes_a_write(
        &pair.src,
        1,
        "stale client on the old server",
        Duration::from_secs(30),
    )
    .await;
    let mut detail = String::new();
    if leaked {
        // What became of the application's write on the new server.
        let overwritten = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if note_of(&pair.dst, 1).await.as_deref() == Some("stale client on the old server")
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .is_ok();
        detail = format!(
            "the old server's freeze is {}; the new server's row 1 now says {:?}{}",
            if freeze_installed(&pair.src).await {
                "there"
            } else {
                "gone"
            },
            note_of(&pair.dst, 1).await,
            if overwritten {
                " (the second process replicated the old server's write over the application's)"
            } else {
                ""
            }
        );
    }
    assert!(
        !leaked,
        "the old server of a cut-over migration took a write: {detail}"
    );
}

/// A second pgshift process that starts (or restarts) while the first is between making the
/// freeze permanent and recording the migration as cut over. Its recovery sees the operation
/// marked running in the shared store; it used to take it for one left by a crash and lift the
/// freeze. Recovery now asks the source first whether a cutover holds the migration's cutover
/// lock, and leaves such an operation to the process that runs it. (Before that look came
/// first, B found the permanent freeze, tried to record the cutover itself, and its start waited
/// on the migration's row, which the first process's finish was waiting for: B never served.)
/// The old server stays frozen throughout, and the first process records its cutover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_in_a_second_process_lifts_the_freeze_of_a_running_cutover() {
    init_tracing();
    let pair = pair(100).await;
    pair.source.create_database("meta").await;
    let meta_dsn = pair.source.dsn("meta");
    let a = on_shared_store(&meta_dsn).await;
    start_synced(&a, &pair, "shop").await;
    let meta = pair.source.connect("meta").await;

    let held = hold_migration_row(&meta, "shop").await;
    let (status, started) = a.post("/migrations/shop/cutover", relaxed(json!({}))).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    wait_finish_blocked_in_store(&meta).await;
    let told = try_write(&pair.src).await.unwrap_err();
    assert!(told.contains("moved this database"), "{told}");

    // B starts now; it serves requests only once its recovery has run.
    let b = on_shared_store(&meta_dsn).await;
    b.migration("shop").await;
    let frozen_after_b = freeze_installed(&pair.src).await;
    let write_after_b = write_note(&pair.src, 2, "written while A finished").await;

    // B's recovery marked A's operation failed already: wait for A's own outcome.
    let (_, seen_by_b) = a.get(&format!("/operations/{id}")).await;
    held.rollback().await.unwrap();
    let (op, m) = wait_for("A's cutover to end", Duration::from_secs(120), || async {
        let (_, op) = a.get(&format!("/operations/{id}")).await;
        let m = a.migration("shop").await;
        let restored = op["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "restore"));
        (op["state"] == "succeeded" || restored).then_some((op, m))
    })
    .await;
    assert!(
        frozen_after_b && write_after_b.is_err(),
        "while A's cutover was finishing, B's start lifted its freeze (write: {write_after_b:?}) and marked the operation {:?}; A's cutover then ended {:?} with the migration {:?}, and the old server {}",
        seen_by_b["state"],
        op["state"],
        m["state"],
        match try_write(&pair.src).await {
            Ok(()) => "takes writes".to_string(),
            Err(e) => format!("refuses writes: {e}"),
        }
    );
    // B left A's operation alone, and A recorded its own outcome.
    assert_eq!(seen_by_b["state"], "running", "{seen_by_b}");
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(m["state"], "cut_over", "{m}");
    let told = try_write(&pair.src).await.unwrap_err();
    assert!(told.contains("moved this database"), "{told}");
}

/// A partition created on the source while the cutover runs (pg_partman's daily job, say) gets
/// no freeze trigger: the freeze is a statement trigger per relation listed when the freeze
/// began, and statement triggers are not cloned to new partitions. `make_permanent` counts the
/// triggers it made, not the relations that exist, so the cutover finishes, and afterwards the
/// old server takes writes straight into that partition: writes the new server never gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_created_during_the_cutover_takes_writes_after_the_finish() {
    init_tracing();
    let pair = pair(50).await;
    let ddl = "CREATE TABLE reading (id bigint NOT NULL, day date NOT NULL, v integer,
                   PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
               CREATE TABLE reading_2026 PARTITION OF reading
                   FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');";
    pair.source.psql("app", ddl).await;
    pair.target.psql("app", ddl).await;
    // The new server already has next year's partition (the application's DDL runs there too).
    pair.target
        .psql(
            "app",
            "CREATE TABLE reading_2027 PARTITION OF reading FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');",
        )
        .await;
    sqlx::query("INSERT INTO reading SELECT g, '2026-06-01', g FROM generate_series(1, 20) g")
        .execute(&pair.src)
        .await
        .unwrap();
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let (id, stall) = stalled_cutover(&server, &pair, json!({"checksums": false})).await;
    pair.source
        .psql(
            "app",
            "CREATE TABLE reading_2027 PARTITION OF reading FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');",
        )
        .await;
    drop(stall);
    let op = wait_operation(&server, &id, Duration::from_secs(120)).await;
    if op["state"] == "failed" {
        // The safe outcome: the finish saw the partition its freeze does not cover and stopped;
        // the source takes writes again and they replicate.
        assert!(op["error"].as_str().unwrap().contains("partition"), "{op}");
        wait_for(
            "the freeze to be lifted",
            Duration::from_secs(60),
            || async { (!pgshift_tests::cutover::freeze_installed(&pair.src).await).then_some(()) },
        )
        .await;
        sqlx::query("INSERT INTO reading_2027 VALUES (101, '2027-03-01', 1)")
            .execute(&pair.src)
            .await
            .unwrap();
        return;
    }
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(server.migration("shop").await["state"], "cut_over");
    // The parent is frozen for good...
    let parent = sqlx::query("INSERT INTO reading VALUES (100, '2027-03-01', 1)")
        .execute(&pair.src)
        .await
        .unwrap_err()
        .to_string();
    assert!(parent.contains("moved this database"), "{parent}");
    // ...but not the partition that joined during the cutover.
    let direct = sqlx::query("INSERT INTO reading_2027 VALUES (101, '2027-03-01', 1)")
        .execute(&pair.src)
        .await;
    let on_target: i64 = sqlx::query_scalar("SELECT count(*) FROM reading WHERE id = 101")
        .fetch_one(&pair.dst)
        .await
        .unwrap();
    assert!(
        direct.is_err(),
        "the old server of a cut-over migration took a write into reading_2027 (rows with id 101 on the new server: {on_target})"
    );
}

/// The finish makes the freeze permanent, then records the migration as cut over. From the
/// first moment writers are told "moved this database to … write there"; if recording failed
/// (the metadata store's connection drops; a crash there does the same through recovery) the
/// cutover used to give writes back to the old server and replication went on old → new. An
/// application that did as it was told has written to the new server meanwhile; the old server
/// took writes again, and the forward replication overwrote the new server's rows with them.
///
/// The expectation follows the design: the permanent freeze is the decision, and the finish
/// keeps trying to record it (as a run or recovery would) instead of restoring. Its retry is a
/// store write like any other and waits for the migration's row, so the row lock is released
/// once the connection has dropped (the store's outage is over) and only then is the outcome
/// awaited; the test first waited for the outcome while still holding the row, which the
/// retrying finish can never reach. The old server must still refuse writes, and the new
/// server keep what the application wrote there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_told_the_database_moved_are_sent_back() {
    init_tracing();
    let pair = pair(100).await;
    pair.source.create_database("meta").await;
    let meta_dsn = pair.source.dsn("meta");
    let server = on_shared_store(&meta_dsn).await;
    start_synced(&server, &pair, "shop").await;
    let meta = pair.source.connect("meta").await;

    let held = hold_migration_row(&meta, "shop").await;
    let (status, started) = server
        .post("/migrations/shop/cutover", relaxed(json!({})))
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let pid = wait_finish_blocked_in_store(&meta).await;
    let told = try_write(&pair.src).await.unwrap_err();
    assert!(told.contains("moved this database"), "{told}");
    assert!(told.contains("write there"), "{told}");
    // The application does as it is told.
    write_note(&pair.dst, 3, "written on the new server as told")
        .await
        .unwrap();

    // The metadata store's connection drops while the finish records the outcome.
    let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&meta)
        .await
        .unwrap();
    held.rollback().await.unwrap();
    let op = wait_operation(&server, &id, Duration::from_secs(120)).await;

    let after = try_write(&pair.src).await;
    if after.is_ok() {
        // Writers go back to the old server; replication carries their writes over the new
        // server's rows.
        write_note(&pair.src, 3, "written on the old server again")
            .await
            .unwrap();
        pgshift_tests::migrate::wait_drained(&server, "shop", &pair.src, Duration::from_secs(120))
            .await;
    }
    assert!(
        after.is_err(),
        "after telling writers {told:?}, the cutover ended {:?} ({}) and the old server takes writes again; the new server's row 3 now says {:?}",
        op["state"],
        op["error"],
        note_of(&pair.dst, 3).await
    );
    let told_after = after.unwrap_err();
    assert!(told_after.contains("moved this database"), "{told_after}");
    // The decision was recorded, and the application's write on the new server stands.
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(server.migration("shop").await["state"], "cut_over");
    assert_eq!(
        note_of(&pair.dst, 3).await.as_deref(),
        Some("written on the new server as told")
    );
}

/// The finish checks the freeze at one moment (same function, enough enabled triggers, inside
/// its deadline) and then stops the migration's run without draining what was captured after
/// the final tick. A write that got past the freeze in between (here: the table's owner
/// disables the freeze trigger, updates a row and enables it again while the finish runs) is
/// captured on the source, yet the cutover succeeds and the run stops before applying it: the
/// new server never gets it, and nothing says so. (The finish is held at `CREATE OR REPLACE`
/// by an uncommitted change of the freeze function's catalog row, and the target's "Odd Pair"
/// is locked so that the run cannot apply the change in the few milliseconds before it stops.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_the_freeze_during_the_finish_is_never_applied() {
    init_tracing();
    let pair = pair(100).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;
    let schema = pgshift_tests::migrate::capture_schema(&pair.src).await;

    // (Row counts only: the stall would hold the range pass of a content verification; the
    // write below comes after the verification either way.)
    let (id, stall) = stalled_cutover(&server, &pair, json!({"checksums": false})).await;
    // Hold the freeze function's catalog row: the finish will wait for it.
    let mut blocker = pair.src.begin().await.unwrap();
    sqlx::query(&format!(
        "ALTER FUNCTION {}.cutover_freeze() COST 101",
        pgshift_tests::quote_ident(&schema)
    ))
    .execute(&mut *blocker)
    .await
    .unwrap();
    drop(stall);
    wait_for(
        "the finish to wait for the freeze function",
        Duration::from_secs(120),
        || async {
            sqlx::query_scalar::<_, i32>(
                "SELECT pid FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'
                    AND query LIKE '%The cutover''s freeze on the source%'",
            )
            .fetch_optional(&pair.src)
            .await
            .unwrap()
        },
    )
    .await;
    let (_, op) = server.get(&format!("/operations/{id}")).await;
    assert_eq!(step(&op, "verify")["outcome"], "succeeded", "{op}");

    // The run may not apply the change before the finish stops it.
    let mut trap = pair.dst.begin().await.unwrap();
    sqlx::query("LOCK TABLE \"Odd Pair\" IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *trap)
        .await
        .unwrap();
    let trigger: String = sqlx::query_scalar(
        "SELECT t.tgname::text FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
          WHERE t.tgrelid = '\"Odd Pair\"'::regclass AND p.proname = 'cutover_freeze'",
    )
    .fetch_one(&pair.src)
    .await
    .unwrap();
    let trigger = pgshift_tests::quote_ident(&trigger);
    pair.source
        .psql(
            "app",
            &format!(
                "ALTER TABLE \"Odd Pair\" DISABLE TRIGGER {trigger};
                 UPDATE \"Odd Pair\" SET v = '{{\"written\": \"past the freeze\"}}' WHERE k1 = 1;
                 ALTER TABLE \"Odd Pair\" ENABLE TRIGGER {trigger};"
            ),
        )
        .await;
    blocker.rollback().await.unwrap();
    let op = wait_operation(&server, &id, Duration::from_secs(120)).await;
    trap.rollback().await.unwrap();
    let source: String = sqlx::query_scalar("SELECT v::text FROM \"Odd Pair\" WHERE k1 = 1")
        .fetch_one(&pair.src)
        .await
        .unwrap();
    let target: String = sqlx::query_scalar("SELECT v::text FROM \"Odd Pair\" WHERE k1 = 1")
        .fetch_one(&pair.dst)
        .await
        .unwrap();
    assert!(
        op["state"] != "succeeded" || source == target,
        "the cutover succeeded ({}) though the old server's row (1, k1) says {source} and the new server's {target}",
        op["result"]
    );
}

/// `freeze_limit_seconds` is accepted down to any positive value, but the finish needs 2 s of
/// margin before the deadline (FINISH_MARGIN_SECONDS): a cutover with a limit of 2 s or less
/// freezes production, drains and verifies, and then can never finish. It should be refused
/// before anything is frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_limit_within_the_finish_margin_is_refused_before_freezing() {
    init_tracing();
    let pair = pair(20).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;
    let (status, started) = server
        .post(
            "/migrations/shop/cutover",
            relaxed(json!({"freeze_limit_seconds": 2})),
        )
        .await;
    // Refused before anything is frozen (a 4xx naming the field) is the fix.
    if status == 400 || status == 422 {
        assert!(
            started.to_string().contains("freeze_limit_seconds"),
            "{started}"
        );
        return;
    }
    assert_eq!(status, 202, "{started}");
    let op = wait_operation(
        &server,
        started["id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    let froze = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "freeze" && s["outcome"] == "succeeded");
    assert!(
        op["state"] == "succeeded" || !froze,
        "a cutover that could not finish froze the source first: {} ({})",
        op["error"],
        op["result"]["writes_blocked_seconds"]
    );
}

/// The freeze covers tables, not sequences: from the `sequences` step on (the rest of the freeze,
/// and for good after the finish) `nextval` on the old server still hands out values, and the
/// step set the new server to hand out the very same ones next. A client left on the old server
/// that numbers invoices from `invoice_no` (a sequence in a migrated schema, moved by the
/// cutover) issues numbers the new server issues again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "defect: after the cutover the old server still hands out sequence values the new server hands out again"]
async fn the_old_server_hands_out_sequence_values_the_new_server_repeats() {
    init_tracing();
    let pair = pair(20).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;
    let op = cutover(&server, "shop", relaxed(json!({}))).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    try_write(&pair.src).await.unwrap_err();

    let on_old: Result<i64, String> = sqlx::query_scalar("SELECT nextval('invoice_no')")
        .fetch_one(&pair.src)
        .await
        .map_err(|e| e.to_string());
    let on_new: i64 = sqlx::query_scalar("SELECT nextval('invoice_no')")
        .fetch_one(&pair.dst)
        .await
        .unwrap();
    assert!(
        on_old.as_ref().map_or(true, |v| *v != on_new),
        "invoice number {on_new} was handed out by both servers after the cutover (old: {on_old:?})"
    );
}

/// Held: every pgshift session on the source is terminated while the cutover drains (a DBA's
/// idle-session killer, say), the cutover's connection, and with it the advisory lock that
/// keeps runs from lifting its freeze, among them. The cutover notices at its next use of the
/// source and stops instead of finishing; the source is writable again and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_that_lost_its_source_session_stops_and_loses_nothing() {
    init_tracing();
    let pair = pair(100).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let (id, stall) = stalled_cutover(&server, &pair, json!({"checksums": false})).await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'pgshift' AND pid <> pg_backend_pid()",
    )
    .execute(&pair.src)
    .await
    .unwrap();
    drop(stall);
    let op = wait_operation(&server, &id, Duration::from_secs(120)).await;
    assert_eq!(op["state"], "failed", "{op}");
    assert_ne!(server.migration("shop").await["state"], "cut_over");
    write_note(&pair.src, 5, "written after the cutover stopped")
        .await
        .unwrap();
    pgshift_tests::migrate::wait_drained(&server, "shop", &pair.src, Duration::from_secs(120))
        .await;
    assert_same(&pair.src, &pair.dst).await;
}

/// "One run per migration, across every pgshift process": the run's advisory lock lives on a
/// connection the attempt opens and then never uses again, so nothing notices when the source
/// ends that session (here `idle_session_timeout`, which a DBA sets to reap idle sessions; a
/// network cut or a pooler does the same). The lock is gone while the attempt goes on; a second
/// process's run, retrying behind it, takes the lock and applies the same migration at the same
/// time. Two workers then apply the same batches, each recording its own applied tick with an
/// unconditional UPDATE (target.rs `record_batch`): a batch applied twice, a slower worker
/// moving rows and the applied tick back to an older state, and (with a cutover) a second run
/// that the finish does not stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lock_session_died_runs_beside_another_process() {
    init_tracing();
    let pair = pair(50).await;
    pair.source.create_database("meta").await;
    pair.source
        .psql(
            "postgres",
            "ALTER DATABASE app SET idle_session_timeout = '3s'",
        )
        .await;
    let meta = pair.source.dsn("meta");
    let a = on_shared_store(&meta).await;
    start_synced(&a, &pair, "shop").await;
    let b = on_shared_store(&meta).await;

    let newest_tick = |pool: PgPool| async move {
        let schema = pgshift_tests::migrate::capture_schema(&pool).await;
        sqlx::query_scalar::<_, i64>(&format!(
            "SELECT max(tick_id) FROM {}.tick",
            pgshift_tests::quote_ident(&schema)
        ))
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    // Does B's run apply batches? (Only a run holding the lock gets that far.)
    let until = Instant::now() + Duration::from_secs(60);
    let mut b_applied = None;
    while Instant::now() < until && b_applied.is_none() {
        write_note(&pair.src, 1, &format!("{:?}", Instant::now()))
            .await
            .unwrap();
        b_applied = b.migration("shop").await["applied_tick"].as_i64();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // ...while A's run goes on applying too?
    let mut both = None;
    if let Some(b_tick) = b_applied {
        let since = newest_tick(pair.src.clone()).await.max(b_tick);
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until && both.is_none() {
            write_note(&pair.src, 2, &format!("{:?}", Instant::now()))
                .await
                .unwrap();
            let (ma, mb) = (a.migration("shop").await, b.migration("shop").await);
            if ma["applied_tick"].as_i64().unwrap_or(0) > since
                && mb["applied_tick"].as_i64().unwrap_or(0) > since
            {
                both = Some((ma["applied_tick"].clone(), mb["applied_tick"].clone()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(
        both.is_none(),
        "both processes applied batches of migration shop after tick {b_applied:?} (applied ticks: A {:?}, B {:?})",
        both.as_ref().map(|b| &b.0),
        both.as_ref().map(|b| &b.1)
    );
}
