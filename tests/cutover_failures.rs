//! The cutover when something breaks while the source is frozen: the target or the source goes
//! away, pgshift dies, the freeze outlives its limit, or an operator removes a cut-over
//! migration. Each ends with the source writable as before (or the cutover finished), never in
//! between, and the migration's status saying which.

use std::time::Duration;

use pgshift_tests::cutover::{
    assert_same, cutover, freeze_installed, pair, relaxed, stall_apply, start_synced, step,
    try_write, wait_operation, wait_step, wait_synced,
};
use pgshift_tests::migrate::wait_drained;
use pgshift_tests::server::{test_settings, TestServer};
use pgshift_tests::{init_tracing, wait_for};
use serde_json::{json, Value};

/// Starts a cutover of `shop` that stalls in its drain (the target's `item` is locked by the
/// returned transaction) and waits until the source is frozen. Returns the operation's id and
/// the error a writer of the source now sees.
async fn stalled_cutover(
    server: &TestServer,
    pair: &pgshift_tests::cutover::Pair,
    body: Value,
) -> (String, String, sqlx::Transaction<'static, sqlx::Postgres>) {
    let stall = stall_apply(pair).await;
    let mut body = relaxed(body);
    if body.get("timeout_seconds").is_none() {
        body["timeout_seconds"] = json!(600);
    }
    body["checksums"] = json!(false);
    let (status, started) = server.post("/migrations/shop/cutover", body).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let error = wait_for(
        "the freeze to take hold",
        Duration::from_secs(60),
        || async { try_write(&pair.src).await.err() },
    )
    .await;
    wait_step(server, &id, "drain").await;
    (id, error, stall)
}

/// The target goes down during the drain: lifting the freeze needs the source only, so the
/// cutover fails with the source writable again, says how long writes were blocked, and
/// replication resumes once the target is back. While frozen, writers are told a cutover is in
/// progress (not that the database moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_lost_during_the_drain_leaves_the_source_writable() {
    init_tracing();
    let pair = pair(300).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let (id, error, stall) = stalled_cutover(&server, &pair, json!({})).await;
    assert!(error.contains("cutover in progress"), "{error}");
    assert!(!error.contains("moved"), "{error}");
    assert!(error.contains("\"target\""), "{error}");

    pair.target.stop().await;
    drop(stall);
    let op = wait_operation(&server, &id, Duration::from_secs(120)).await;
    assert_eq!(op["state"], "failed", "{op}");
    assert_eq!(step(&op, "restore")["outcome"], "succeeded", "{op}");
    assert!(
        op["result"]["writes_blocked_seconds"].as_f64().unwrap() > 0.0,
        "{op}"
    );
    assert!(!freeze_installed(&pair.src).await, "{op}");
    try_write(&pair.src).await.unwrap();

    pair.target.start_again().await;
    wait_synced(&server, "shop").await;
    let op = cutover(&server, "shop", relaxed(json!({}))).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_same(&pair.src, &pair.dst).await;
    // Only after the finish does the message say the database moved.
    let error = try_write(&pair.src).await.unwrap_err();
    assert!(error.contains("moved this database"), "{error}");
}

/// The source goes down while frozen and the cutover stops: the freeze cannot be lifted yet, so
/// the operation and the migration say the source is still frozen; once the source is back
/// pgshift lifts it by itself and the migration replicates again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_lost_while_frozen_is_unfrozen_once_it_returns() {
    init_tracing();
    let pair = pair(300).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let (id, _, stall) = stalled_cutover(&server, &pair, json!({})).await;
    pair.source.stop().await;
    let (status, body) = server
        .post("/migrations/shop/cutover/abort", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let op = wait_operation(&server, &id, Duration::from_secs(120)).await;
    assert_eq!(op["state"], "aborted", "{op}");
    assert_eq!(step(&op, "restore")["outcome"], "failed", "{op}");
    assert!(
        op["error"].as_str().unwrap().contains("still frozen"),
        "{op}"
    );
    assert_eq!(op["result"]["source_still_frozen"], true, "{op}");
    assert!(op["result"]["writes_blocked_seconds"].is_number(), "{op}");
    let m = wait_for(
        "the migration to say the source is still frozen",
        Duration::from_secs(60),
        || async {
            let m = server.migration("shop").await;
            (m["state"] == "error"
                && m["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("the source is still frozen")))
            .then_some(m)
        },
    )
    .await;
    assert_eq!(m["state"], "error", "{m}");
    drop(stall);

    pair.source.start_again().await;
    let src = pair.source.connect("app").await;
    wait_for(
        "pgshift to lift the freeze",
        Duration::from_secs(90),
        || async { try_write(&src).await.ok() },
    )
    .await;
    assert!(!freeze_installed(&src).await);
    let m = wait_drained(&server, "shop", &src, Duration::from_secs(120)).await;
    assert!(m["error"].is_null(), "{m}");
    assert_same(&src, &pair.dst).await;
}

/// pgshift dies while the source is frozen and does not come back: the source lets writes
/// through by itself once the freeze's limit has passed; those writes are captured and reach
/// the target when pgshift returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_pgshift_cannot_hold_the_source_frozen() {
    init_tracing();
    let pair = pair(300).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let (id, error, stall) =
        stalled_cutover(&server, &pair, json!({"freeze_limit_seconds": 5})).await;
    assert!(error.contains("cutover in progress"), "{error}");
    let dir = server.crash();
    assert!(freeze_installed(&pair.src).await);
    drop(stall);
    wait_for(
        "the source to let writes through past the freeze's limit",
        Duration::from_secs(60),
        || async { try_write(&pair.src).await.ok() },
    )
    .await;
    sqlx::query("UPDATE item SET n = n + 1000 WHERE id <= 10")
        .execute(&pair.src)
        .await
        .unwrap();

    let server = TestServer::start_in(&dir, test_settings()).await;
    let op = wait_operation(&server, &id, Duration::from_secs(30)).await;
    assert_eq!(op["state"], "failed", "{op}");
    assert!(!freeze_installed(&pair.src).await);
    wait_synced(&server, "shop").await;
    let op = cutover(&server, "shop", relaxed(json!({}))).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_same(&pair.src, &pair.dst).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A freeze that reaches its limit while pgshift is alive stops the cutover: writes resume on
/// the source (which lets them through anyway), the cutover never finishes on an expired
/// freeze, and the time writes were blocked is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cutover_never_finishes_past_the_freeze_limit() {
    init_tracing();
    let pair = pair(300).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let (id, _, stall) = stalled_cutover(&server, &pair, json!({"freeze_limit_seconds": 5})).await;
    let op = wait_operation(&server, &id, Duration::from_secs(60)).await;
    drop(stall);
    assert_eq!(op["state"], "failed", "{op}");
    assert!(
        op["error"]
            .as_str()
            .unwrap()
            .contains("freeze_limit_seconds"),
        "{op}"
    );
    assert!(
        op["result"]["writes_blocked_seconds"].as_f64().unwrap() > 0.0,
        "{op}"
    );
    assert!(!freeze_installed(&pair.src).await);
    try_write(&pair.src).await.unwrap();
    wait_drained(&server, "shop", &pair.src, Duration::from_secs(120)).await;
    assert_same(&pair.src, &pair.dst).await;
}

/// Removing a cut-over migration would make the old server writable again: refused unless the
/// request says so, and then the freeze goes with the migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_cut_over_migration_unfreezes_only_when_asked() {
    init_tracing();
    let pair = pair(100).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;
    let op = cutover(&server, "shop", relaxed(json!({}))).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert!(
        op["result"]["writes_blocked_seconds"].as_f64().unwrap() > 0.0,
        "{op}"
    );

    let (status, body) = server.delete("/migrations/shop").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "unfreeze_source_required", "{body}");
    assert!(try_write(&pair.src).await.is_err());
    let (status, body) = server
        .delete("/migrations/shop?unfreeze_source=false")
        .await;
    assert_eq!(status, 409, "{body}");

    let (status, body) = server.delete("/migrations/shop?unfreeze_source=true").await;
    assert!(status.is_success(), "{status} {body}");
    try_write(&pair.src).await.unwrap();
    assert!(!freeze_installed(&pair.src).await);
}

/// A freeze left on the source (here made by hand, as an older pgshift or a failed lift could
/// leave one) is lifted on request; the request is refused while a cutover runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unfreeze_lifts_a_freeze_left_behind() {
    init_tracing();
    let pair = pair(100).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let (id, _, stall) = stalled_cutover(&server, &pair, json!({})).await;
    let (status, body) = server.post("/migrations/shop/unfreeze", json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "operation_running", "{body}");
    server
        .post("/migrations/shop/cutover/abort", json!({}))
        .await;
    wait_operation(&server, &id, Duration::from_secs(60)).await;
    drop(stall);
    try_write(&pair.src).await.unwrap();

    let schema: String = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'pgshift\\_%' LIMIT 1",
    )
    .fetch_one(&pair.src)
    .await
    .unwrap();
    pair.source
        .psql(
            "app",
            &format!(
                r#"CREATE FUNCTION "{schema}".cutover_freeze() RETURNS trigger LANGUAGE plpgsql AS
                   $f$ BEGIN RAISE EXCEPTION 'is frozen (left behind)'; END $f$;
                   CREATE TRIGGER left_behind BEFORE INSERT ON item
                       FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".cutover_freeze();"#
            ),
        )
        .await;
    assert!(try_write(&pair.src).await.is_err());
    let (status, body) = server.post("/migrations/shop/unfreeze", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lifted"], true, "{body}");
    try_write(&pair.src).await.unwrap();
    let (status, body) = server.post("/migrations/shop/unfreeze", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lifted"], false, "{body}");
    wait_synced(&server, "shop").await;
}

/// How many pgshift capture schemas (those with an event table) `pool`'s database holds.
async fn capture_schemas(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname LIKE 'pgshift\\_%' AND c.relname = 'event'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// After a restart, the unfinished cutover's way back is gone: no record, nothing installed on
/// the new server, nothing replicating to the old one; a retried cutover arms it again.
async fn assert_way_back_removed(
    server: &TestServer,
    pair: &pgshift_tests::cutover::Pair,
    id: &str,
) {
    let op = wait_operation(server, id, Duration::from_secs(30)).await;
    assert_eq!(op["state"], "failed", "{op}");
    assert!(!freeze_installed(&pair.src).await, "{op}");
    assert!(
        op["error"]
            .as_str()
            .unwrap()
            .contains("\"shop-reverse\" it had armed was removed"),
        "{op}"
    );
    let (status, body) = server.get("/migrations/shop-reverse").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(capture_schemas(&pair.dst).await, 0);
    let (_, all) = server.get("/migrations").await;
    assert!(!all.to_string().contains("truncate"), "{all}");
    try_write(&pair.src).await.unwrap();
    wait_drained(server, "shop", &pair.src, Duration::from_secs(120)).await;
    let op = cutover(server, "shop", relaxed(json!({"reverse": true}))).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_same(&pair.src, &pair.dst).await;
    wait_synced(server, "shop-reverse").await;
}

/// pgshift dies while the cutover with `reverse: true` freezes the source (an application
/// transaction holds `item` back): at restart the freeze is lifted and the reverse migration it
/// armed is removed, instead of replicating the new server back on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_while_freezing_disarms_the_way_back() {
    init_tracing();
    let pair = pair(200).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let mut writer = pair.src.begin().await.unwrap();
    sqlx::query("INSERT INTO item (writer, n) VALUES (7, 7)")
        .execute(&mut *writer)
        .await
        .unwrap();
    let (status, started) = server
        .post(
            "/migrations/shop/cutover",
            relaxed(json!({"reverse": true, "checksums": false, "timeout_seconds": 600})),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    wait_step(&server, &id, "freeze").await;
    let dir = server.crash();
    writer.rollback().await.unwrap();
    assert_eq!(
        capture_schemas(&pair.dst).await,
        1,
        "armed before the freeze"
    );

    let server = TestServer::start_in(&dir, test_settings()).await;
    assert_way_back_removed(&server, &pair, &id).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// pgshift dies while arming the way back (held up by a lock on the new server): at restart the
/// half-armed reverse migration is removed, never run as a fresh migration (which would tell the
/// operator to empty the old server's tables).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_while_arming_the_way_back_disarms_it() {
    init_tracing();
    let pair = pair(200).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    // Conflicts with the capture's CREATE TRIGGER on the new server, not with the apply.
    let mut holder = pair.dst.begin().await.unwrap();
    sqlx::query("LOCK TABLE ledger IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (status, started) = server
        .post(
            "/migrations/shop/cutover",
            relaxed(json!({"reverse": true, "checksums": false})),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    wait_for(
        "the way back to be stored",
        Duration::from_secs(30),
        || async {
            let (status, _) = server.get("/migrations/shop-reverse").await;
            (status == 200).then_some(())
        },
    )
    .await;
    let dir = server.crash();
    holder.rollback().await.unwrap();

    let server = TestServer::start_in(&dir, test_settings()).await;
    assert_way_back_removed(&server, &pair, &id).await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
