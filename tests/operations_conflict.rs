//! Operations that must not get in each other's way (issue 13, item 15): while a cutover, a
//! verification or a table resync runs on a migration, starting, pausing, resuming and removing
//! it are refused with 409 `operation_running`, on the API and on the dashboard, and the
//! migration keeps running; once the operation has finished, nothing is refused any more (item
//! 14: a finished operation does not count as running). A start or resume would set the run
//! going again under a cutover that has stopped it at its finish, or beside a resync that
//! restarts it itself.

use std::time::Duration;

use pgshift::auth::Role;
use pgshift_tests::cutover::{pair, relaxed, start_synced, step_names, wait_operation, Pair};
use pgshift_tests::dashboard::{create_user, UiClient};
use pgshift_tests::server::TestServer;
use pgshift_tests::{init_tracing, wait_for};
use reqwest::StatusCode;
use serde_json::{json, Value};

const OPERATOR_PW: &str = "operator-password-1";
const ADMIN_PW: &str = "admin-password-1";

/// A server with an operator (olga) and an admin (adam) for the dashboard.
async fn server_with_users() -> TestServer {
    let server = TestServer::start().await;
    create_user(&server.data_dir, "olga", Role::Operator, OPERATOR_PW).await;
    create_user(&server.data_dir, "adam", Role::Admin, ADMIN_PW).await;
    server
}

/// Stalls the apply of `item` on the target with a lock held by the returned transaction.
async fn stall_apply(pair: &Pair) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pair.dst.begin().await.unwrap();
    sqlx::query("LOCK TABLE item IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    // A change the worker must apply to item, so it waits behind the lock.
    sqlx::query("INSERT INTO item (writer, n) VALUES (2, 2)")
        .execute(&pair.src)
        .await
        .unwrap();
    tx
}

/// Holds `lock` on `table` on the target until the returned transaction ends.
async fn hold_on_target(
    pair: &Pair,
    table: &str,
    lock: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pair.dst.begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE {table} IN {lock} MODE"))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Asserts a 409 `operation_running` answer.
fn assert_refused(what: &str, status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::CONFLICT, "{what}: {body}");
    assert_eq!(body["error"]["code"], "operation_running", "{what}: {body}");
}

/// Start, pause, resume, DELETE and (for completeness) resync are refused on the API, start,
/// pause, resume and remove on the dashboard, with words that say why; the migration still runs
/// afterwards.
async fn assert_everything_refused(server: &TestServer) {
    for action in ["start", "pause", "resume"] {
        let (status, body) = server
            .post(&format!("/migrations/shop/{action}"), json!({}))
            .await;
        assert_refused(action, status, &body);
        let message = body["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains("running"), "{action}: {message}");
    }
    let (status, body) = server.delete("/migrations/shop").await;
    assert_refused("delete", status, &body);
    let (status, body) = server
        .post("/migrations/shop/tables/public.ledger/resync", json!({}))
        .await;
    assert_refused("resync", status, &body);

    let mut olga = UiClient::new(&server.base);
    olga.sign_in("olga", OPERATOR_PW).await;
    let csrf = olga.csrf().await;
    for action in ["start", "pause", "resume"] {
        let page = olga
            .post(&format!("/ui/migrations/shop/{action}"), &[("csrf", &csrf)])
            .await;
        assert_eq!(page.status, StatusCode::CONFLICT, "{action}: {}", page.body);
        assert!(page.body.contains("is running"), "{action}: {}", page.body);
    }
    let mut adam = UiClient::new(&server.base);
    adam.sign_in("adam", ADMIN_PW).await;
    let csrf = adam.csrf().await;
    let page = adam
        .post(
            "/ui/migrations/shop/remove",
            &[("csrf", &csrf), ("confirm", "shop")],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    assert!(page.body.contains("is running"), "{}", page.body);

    // Nothing was paused or removed behind the refusal.
    let (status, body) = server.get("/migrations/shop").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["state"], "paused", "{body}");
}

/// Once no operation runs, start, resync, pause, resume and remove go through.
async fn assert_nothing_refused(server: &TestServer) {
    let (status, body) = server.post("/migrations/shop/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "start after the operation: {body}");
    let (status, body) = server
        .post("/migrations/shop/tables/public.ledger/resync", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "resync after the operation: {body}");
    let (status, body) = server.post("/migrations/shop/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK, "pause after the operation: {body}");
    assert_eq!(body["state"], "paused", "{body}");
    let (status, body) = server.post("/migrations/shop/resume", json!({})).await;
    assert_eq!(status, StatusCode::OK, "resume: {body}");
    let (status, body) = server.delete("/migrations/shop").await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "delete after the operation: {body}"
    );
}

/// A cutover held in its drain (the target cannot apply): pausing used to go through and be
/// silently overridden when the cutover restored the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_pause_resume_and_remove_are_refused_while_a_cutover_runs() {
    init_tracing();
    let pair = pair(500).await;
    let server = server_with_users().await;
    start_synced(&server, &pair, "shop").await;

    let stall = stall_apply(&pair).await;
    let (status, started) = server
        .post(
            "/migrations/shop/cutover",
            relaxed(json!({"timeout_seconds": 600, "checksums": false})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    wait_for("the drain step", Duration::from_secs(60), || async {
        let (_, op) = server.get(&format!("/operations/{id}")).await;
        step_names(&op).contains(&"drain".to_string()).then_some(())
    })
    .await;

    assert_everything_refused(&server).await;
    let (_, op) = server.get(&format!("/operations/{id}")).await;
    assert_eq!(op["state"], "running", "{op}");

    let (status, body) = server
        .post("/migrations/shop/cutover/abort", json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let op = wait_operation(&server, &id, Duration::from_secs(60)).await;
    assert_eq!(op["state"], "aborted", "{op}");
    stall.rollback().await.unwrap();
    pgshift_tests::cutover::wait_synced(&server, "shop").await;

    assert_nothing_refused(&server).await;
}

/// A verification whose comparison waits for a table the test holds on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_pause_resume_and_remove_are_refused_while_a_verification_runs() {
    init_tracing();
    let pair = pair(500).await;
    let server = server_with_users().await;
    start_synced(&server, &pair, "shop").await;

    // Nothing is written to ledger, so the worker never waits for it; the verification's
    // comparison of ledger on the target does.
    let hold = hold_on_target(&pair, "ledger", "ACCESS EXCLUSIVE").await;
    let (status, started) = server.post("/migrations/shop/verify", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_str().unwrap().to_string();

    assert_everything_refused(&server).await;
    let (_, op) = server.get(&format!("/operations/{id}")).await;
    assert_eq!(op["state"], "running", "{op}");

    hold.rollback().await.unwrap();
    let op = wait_operation(&server, &id, Duration::from_secs(120)).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["result"]["differs"], false, "{op}");

    assert_nothing_refused(&server).await;
}

/// A resync whose emptying of the table waits for a reader the test holds on the target: a
/// pause meanwhile used to go through, and the resync then started the paused migration again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_pause_resume_and_remove_are_refused_while_a_resync_runs() {
    init_tracing();
    let pair = pair(500).await;
    let server = server_with_users().await;
    start_synced(&server, &pair, "shop").await;

    let hold = hold_on_target(&pair, "ledger", "ACCESS SHARE").await;
    let resync = {
        let (client, url, token) = (
            server.client.clone(),
            server.url("/migrations/shop/tables/public.ledger/resync"),
            server.token.clone(),
        );
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            (resp.status(), resp.text().await.unwrap())
        })
    };
    wait_for(
        "the resync to wait for the table on the target",
        Duration::from_secs(60),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE relation = 'ledger'::regclass AND NOT granted",
            )
            .fetch_one(&pair.dst)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;

    assert_everything_refused(&server).await;
    let (status, body) = server
        .post("/migrations/shop/cutover", relaxed(json!({})))
        .await;
    assert_refused("cutover", status, &body);

    hold.rollback().await.unwrap();
    let (status, body) = resync.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    pgshift_tests::cutover::wait_synced(&server, "shop").await;

    assert_nothing_refused(&server).await;
}
