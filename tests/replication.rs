//! The engine against real PostgreSQL servers: randomized concurrent writes through the copy
//! and catch-up, crashes of either server and of pgshift itself, pause/resume and removal.
//! Every test ends with an exact comparison of every row.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift_tests::migrate::{
    assert_same_rows, capture_schema, wait_drained, wait_partitions_followed,
};
use pgshift_tests::server::{test_settings, TestServer};
use pgshift_tests::workload::{self, SCHEMA, TABLES, TARGET_TRIGGER};
use pgshift_tests::{init_tracing, wait_for, PgCluster, PgPool};
use serde_json::json;

const DRAIN: Duration = Duration::from_secs(120);

struct Pair {
    source: PgCluster,
    target: PgCluster,
    src: PgPool,
    dst: PgPool,
}

async fn pair(customers: i64) -> Pair {
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    source.psql("app", SCHEMA).await;
    target.psql("app", SCHEMA).await;
    target.psql("app", TARGET_TRIGGER).await;
    let src = source.connect("app").await;
    let dst = target.connect("app").await;
    workload::seed(&src, customers, 7).await;
    Pair {
        source,
        target,
        src,
        dst,
    }
}

async fn register(server: &TestServer, pair: &Pair) {
    server.add_cluster("source", &pair.source.admin_dsn()).await;
    server.add_cluster("target", &pair.target.admin_dsn()).await;
}

async fn assert_identical(pair: &Pair) {
    for (table, order) in TABLES {
        assert_same_rows(&pair.src, &pair.dst, table, order).await;
    }
}

fn table_state(m: &serde_json::Value, table: &str) -> String {
    m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == table)
        .unwrap()["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Invariant 1: concurrent inserts, updates, deletes, key changes, rollbacks and truncates over
/// FK-linked tables of every hard type, started before the copy and running through it, end
/// with the target equal to the source — and the target's own trigger never fired.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_writes_during_copy_and_catch_up_end_identical() {
    init_tracing();
    let pair = pair(3_000).await;
    let server = TestServer::start().await;
    register(&server, &pair).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (stats, writers) =
        workload::spawn_workload(pair.source.dsn("app"), 4, 100_000, 3_000, 11, stop.clone());
    // Writes are under way before capture is installed and the copy starts.
    wait_for(
        "the workload to commit",
        Duration::from_secs(30),
        || async { (stats.committed.load(Ordering::Relaxed) > 20).then_some(()) },
    )
    .await;
    server.create_and_start("shop", "app", "app", None).await;
    wait_for(
        "every table to be synced while writes go on",
        DRAIN,
        || async { (server.migration("shop").await["state"] == "synced").then_some(()) },
    )
    .await;
    // Keep writing a while after sync, then stop and drain.
    let committed = stats.committed.load(Ordering::Relaxed);
    wait_for(
        "more writes after sync",
        Duration::from_secs(60),
        || async { (stats.committed.load(Ordering::Relaxed) > committed + 300).then_some(()) },
    )
    .await;
    // The queue rotates and frees event tables by TRUNCATE while writes go on.
    let schema = pgshift_tests::quote_ident(&capture_schema(&pair.src).await);
    wait_for("two rotations of the event tables", DRAIN, || async {
        let rotations: i64 =
            sqlx::query_scalar(&format!("SELECT last_value FROM {schema}.generation_seq"))
                .fetch_one(&pair.src)
                .await
                .unwrap();
        (rotations >= 2).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // The source watch has followed every partition that came or went.
    wait_partitions_followed(&pair.src).await;
    let m = wait_drained(&server, "shop", &pair.src, DRAIN).await;
    assert_identical(&pair).await;
    let churned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relname ~ '^region_event_[rs][0-9]+$'",
    )
    .fetch_one(&pair.src)
    .await
    .unwrap();
    eprintln!("partitions created or attached by the workload: {churned}");
    let fired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customer WHERE name = 'TRIGGER FIRED'")
            .fetch_one(&pair.dst)
            .await
            .unwrap();
    assert_eq!(fired, 0, "the target's trigger fired on replicated rows");
    assert!(
        stats.rolled_back.load(Ordering::Relaxed) > 0,
        "the workload rolled nothing back"
    );
    assert!(m["events_applied"].as_i64().unwrap() > 0);
    eprintln!(
        "committed {} rolled back {} failed {}; events applied {}",
        stats.committed.load(Ordering::Relaxed),
        stats.rolled_back.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        m["events_applied"]
    );
    // Some customer documents were stored out of line.
    let toasted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customer WHERE pg_column_size(doc) > 2000")
            .fetch_one(&pair.dst)
            .await
            .unwrap();
    assert!(toasted > 0, "no TOASTed values were replicated");
    // Foreign keys hold on the target.
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM \"Order Items\" i WHERE NOT EXISTS (SELECT 1 FROM customer c WHERE c.id = i.customer_id)",
    )
    .fetch_one(&pair.dst)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
}

/// The source is killed (-9) in the middle of the copy; the copy resumes from its last chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_killed_during_copy_resumes_and_ends_identical() {
    init_tracing();
    let pair = pair(20_000).await;
    let items_total = 60_000;
    let server = TestServer::start().await;
    register(&server, &pair).await;
    server.create_and_start("shop", "app", "app", None).await;
    let copied_before = wait_for("the copy to commit a chunk of customers", DRAIN, || async {
        let n: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT rows_copied FROM {}.table_state WHERE table_name = 'public.Order Items'",
            pgshift_tests::quote_ident(&capture_schema(&pair.src).await)
        ))
        .fetch_optional(&pair.dst)
        .await
        .ok()
        .flatten();
        n.filter(|n| *n > 0)
    })
    .await;
    pair.source.kill9().await;
    pair.source.start_again().await;
    // Writes after the crash, while the copy resumes.
    pair.source.psql("app", "UPDATE customer SET balance = 42 WHERE id % 5 = 0; DELETE FROM customer WHERE id % 17 = 0").await;
    let m = wait_drained(&server, "shop", &pair.src, DRAIN).await;
    assert_identical(&pair).await;
    let items = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "public.Order Items")
        .unwrap()
        .clone();
    assert!(
        copied_before < items_total,
        "the copy finished before the crash; the test needs a bigger table"
    );
    // Resumed, not restarted: the rows copied add up to the table once, not once plus a restart.
    assert!(
        items["rows_copied"].as_i64().unwrap() <= items_total,
        "copy restarted from zero: {items}"
    );
}

/// The target is killed during apply under load, then stopped and started again: nothing is
/// lost and nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_crashes_and_restarts_during_apply() {
    init_tracing();
    let pair = pair(1_000).await;
    let server = TestServer::start().await;
    register(&server, &pair).await;
    server.create_and_start("shop", "app", "app", None).await;
    wait_for("sync", DRAIN, || async {
        (server.migration("shop").await["state"] == "synced").then_some(())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (stats, writers) =
        workload::spawn_workload(pair.source.dsn("app"), 3, 200_000, 1_000, 21, stop.clone());
    let applied_before = wait_for("events to be applied under load", DRAIN, || async {
        let m = server.migration("shop").await;
        m["events_applied"].as_i64().filter(|n| *n > 200)
    })
    .await;
    pair.target.kill9().await;
    let committed = stats.committed.load(Ordering::Relaxed);
    wait_for(
        "writes while the target is down",
        Duration::from_secs(60),
        || async { (stats.committed.load(Ordering::Relaxed) > committed + 100).then_some(()) },
    )
    .await;
    pair.target.start_again().await;
    wait_for("apply to resume", DRAIN, || async {
        let m = server.migration("shop").await;
        m["events_applied"]
            .as_i64()
            .filter(|n| *n > applied_before + 200)
    })
    .await;
    // A clean stop and start too.
    pair.target.restart().await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    wait_drained(&server, "shop", &pair.src, DRAIN).await;
    assert_identical(&pair).await;
}

/// pgshift itself dies mid-copy (every task dropped at once) and starts again on the same data
/// directory: the running migration resumes by itself and the copy continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pgshift_crash_during_copy_resumes_on_restart() {
    init_tracing();
    let pair = pair(20_000).await;
    let server = TestServer::start().await;
    register(&server, &pair).await;
    server.create_and_start("shop", "app", "app", None).await;
    wait_for("the copy to be under way", DRAIN, || async {
        let m = server.migration("shop").await;
        m["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["rows_copied"].as_i64().unwrap_or(0) > 0)
            .then_some(())
    })
    .await;
    let dir = server.crash();
    pair.source
        .psql(
            "app",
            "UPDATE customer SET note = 'after crash' WHERE id % 3 = 0",
        )
        .await;
    let server = TestServer::start_in(&dir, test_settings()).await;
    wait_drained(&server, "shop", &pair.src, DRAIN).await;
    assert_identical(&pair).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Pause keeps capturing; resume applies what accumulated; remove takes away everything
/// pgshift installed on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_and_remove() {
    init_tracing();
    let pair = pair(500).await;
    let server = TestServer::start().await;
    register(&server, &pair).await;
    server
        .create_and_start(
            "shop",
            "app",
            "app",
            Some(vec!["public.customer", "public.Order*"]),
        )
        .await;
    wait_drained(&server, "shop", &pair.src, DRAIN).await;
    let (status, m) = server.post("/migrations/shop/pause", json!({})).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["state"], "paused");
    pair.source.psql("app", "UPDATE customer SET note = 'while paused'; DELETE FROM \"Order Items\" WHERE \"Line\" = 3").await;
    let paused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customer WHERE note = 'while paused'")
            .fetch_one(&pair.dst)
            .await
            .unwrap();
    assert_eq!(paused, 0, "a paused migration applied changes");
    let m = server.migration("shop").await;
    assert_eq!(m["state"], "paused");
    assert!(
        m["pending_events"].as_i64().unwrap() >= 500,
        "a paused migration must show what waits: {m}"
    );
    let (status, m) = server.post("/migrations/shop/resume", json!({})).await;
    assert_eq!(status, 200, "{m}");
    wait_drained(&server, "shop", &pair.src, DRAIN).await;
    assert_same_rows(&pair.src, &pair.dst, "customer", "id").await;
    assert_same_rows(
        &pair.src,
        &pair.dst,
        "\"Order Items\"",
        "\"Order Id\", \"Line\"",
    )
    .await;
    // Tables outside the patterns were left alone.
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pair.dst)
        .await
        .unwrap();
    assert_eq!(ledger, 0);
    assert_eq!(
        table_state(&server.migration("shop").await, "public.customer"),
        "synced"
    );

    let (status, body) = server.delete("/migrations/shop").await;
    assert_eq!(status, 204, "{body}");
    for pool in [&pair.src, &pair.dst] {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgshift%')
                  + (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgshift%')
                  + (SELECT count(*) FROM pg_proc WHERE proname LIKE 'capture%')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(left, 0, "pgshift left objects behind");
    }
    // The application keeps writing without pgshift.
    pair.source
        .psql(
            "app",
            "UPDATE customer SET note = 'after removal' WHERE id = 1",
        )
        .await;
    let (status, _) = server.get("/migrations/shop").await;
    assert_eq!(status, 404);
}

/// A migration whose target goes away shows the error and retries; the other migrations of
/// the same server keep going, and the failed one recovers by itself when its target is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_migration_shows_its_error_and_spares_the_others() {
    init_tracing();
    let (source, healthy, failing) =
        tokio::join!(PgCluster::start(), PgCluster::start(), PgCluster::start());
    let table = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    for (cluster, db) in [
        (&source, "one"),
        (&source, "two"),
        (&healthy, "one"),
        (&failing, "two"),
    ] {
        cluster.create_database(db).await;
        cluster.psql(db, table).await;
    }
    source
        .psql(
            "one",
            "INSERT INTO t SELECT g, 'one' FROM generate_series(1, 100) g",
        )
        .await;
    source
        .psql(
            "two",
            "INSERT INTO t SELECT g, 'two' FROM generate_series(1, 100) g",
        )
        .await;
    let server = TestServer::start().await;
    server.add_cluster("source", &source.admin_dsn()).await;
    server.add_cluster("healthy", &healthy.admin_dsn()).await;
    server.add_cluster("failing", &failing.admin_dsn()).await;
    for (name, target) in [("one", "healthy"), ("two", "failing")] {
        let body = json!({"name": name, "source": {"cluster": "source", "database": name},
                          "target": {"cluster": target, "database": name}});
        let (status, body) = server.post("/migrations", body).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = server
            .post(&format!("/migrations/{name}/start"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for name in ["one", "two"] {
        wait_for(&format!("{name} synced"), DRAIN, || async {
            (server.migration(name).await["state"] == "synced").then_some(())
        })
        .await;
    }

    failing.kill9().await;
    source
        .psql("two", "UPDATE t SET v = 'while the target is down'")
        .await;
    let m = wait_for("the failing migration to show its error", DRAIN, || async {
        let m = server.migration("two").await;
        (m["state"] == "error").then_some(m)
    })
    .await;
    assert!(!m["error"].as_str().unwrap_or("").is_empty(), "{m}");
    let metrics = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"pgshift_migration_failing{migration="two"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"pgshift_migration_failing{migration="one"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"pgshift_table_state{migration="one",table="public.t",state="synced"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"pgshift_table_rows_copied{migration="one",table="public.t"} 100"#),
        "{metrics}"
    );
    // The other migration keeps replicating.
    source
        .psql("one", "UPDATE t SET v = 'still flowing' WHERE id <= 10")
        .await;
    let one_src = source.connect("one").await;
    let one_dst = healthy.connect("one").await;
    wait_drained(&server, "one", &one_src, DRAIN).await;
    assert_same_rows(&one_src, &one_dst, "t", "id").await;

    failing.start_again().await;
    let two_src = source.connect("two").await;
    let two_dst = failing.connect("two").await;
    wait_drained(&server, "two", &two_src, DRAIN).await;
    assert_same_rows(&two_src, &two_dst, "t", "id").await;
    assert!(server.migration("two").await["error"].is_null());
}

/// A table damaged on the target behind pgshift's back is copied again on request, while the
/// source keeps changing it, and ends identical; the other tables are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_copies_a_damaged_table_again() {
    init_tracing();
    let pair = pair(500).await;
    let server = TestServer::start().await;
    register(&server, &pair).await;
    server
        .create_and_start(
            "shop",
            "app",
            "app",
            Some(vec!["public.customer", "public.Order*"]),
        )
        .await;
    wait_drained(&server, "shop", &pair.src, DRAIN).await;
    pair.target
        .psql(
            "app",
            "SET session_replication_role = replica; \
             UPDATE customer SET note = 'damaged' WHERE id <= 10; \
             DELETE FROM customer WHERE id BETWEEN 20 AND 30",
        )
        .await;

    let (status, body) = server
        .post("/migrations/shop/tables/public.nothing/resync", json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, m) = server
        .post("/migrations/shop/tables/public.customer/resync", json!({}))
        .await;
    assert_eq!(status, 200, "{m}");
    assert_ne!(
        table_state(&m, "public.customer"),
        "synced",
        "the table is copied again: {m}"
    );
    pair.source
        .psql(
            "app",
            "UPDATE customer SET note = 'during resync' WHERE id % 7 = 0",
        )
        .await;
    wait_drained(&server, "shop", &pair.src, DRAIN).await;
    assert_same_rows(&pair.src, &pair.dst, "customer", "id").await;
    assert_same_rows(
        &pair.src,
        &pair.dst,
        "\"Order Items\"",
        "\"Order Id\", \"Line\"",
    )
    .await;

    server.post("/migrations/shop/pause", json!({})).await;
    let (status, body) = server
        .post("/migrations/shop/tables/public.customer/resync", json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_running");
}
