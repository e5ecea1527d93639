//! Tables without a key, replicated with whole-row identity: an update or a delete changes
//! exactly one target row equal to the old row in every column, so duplicates stay duplicates
//! and equal values written differently (1.0, 1.00) stay as written. Against real servers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift_tests::case::Case;
use pgshift_tests::cutover::{cutover, relaxed, wait_operation};
use pgshift_tests::migrate::{assert_same_rows, capture_schema};
use pgshift_tests::{quote_ident, wait_for};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const SCHEMA: &str = "
CREATE TABLE log (a int, b text, n numeric, j jsonb, g int GENERATED ALWAYS AS (a * 2) STORED);
CREATE TABLE pairs (x int NOT NULL, y text);
CREATE INDEX ON pairs (x);
CREATE TABLE keyed (id int PRIMARY KEY, v text);
";

const SEED: &str = "
INSERT INTO log (a, b, n, j) VALUES (1, 'a', 1.0, '{}'), (1, 'a', 1.0, '{}'), (1, 'a', 1.0, '{}'),
    (2, NULL, NULL, NULL), (2, NULL, NULL, NULL), (5, 'e', -0.0, '[1, 2]');
INSERT INTO log (a, b, n, j) SELECT g % 100, 'bulk', g, jsonb_build_object('g', g % 10) FROM generate_series(1, 20000) g;
INSERT INTO pairs SELECT g % 50, 'p' FROM generate_series(1, 2000) g;
INSERT INTO keyed SELECT g, 'v' FROM generate_series(1, 100) g;
";

const TABLES: &[(&str, &str)] = &[
    ("log", "t::text COLLATE \"C\""),
    ("pairs", "t::text COLLATE \"C\""),
    ("keyed", "id"),
];

fn table<'a>(m: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

/// Updates and deletes touch one of several equal rows; respellings, NULLs, no-op updates and
/// truncates; a row trigger on the source changes rows its own statement changes before their
/// captures fire (the order captures reach the queue is then not the order of the changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyless_tables_keep_duplicates_and_spellings() {
    let case = Case::start(SCHEMA, SEED).await;
    let m = case.server.migration("m").await;
    assert_eq!(table(&m, "public.log")["identity"], "whole row", "{m}");
    assert_eq!(table(&m, "public.keyed")["identity"], "primary key", "{m}");
    case.drain_and_compare(TABLES).await;

    case.write_and_compare(
        "UPDATE log SET n = 1.00 WHERE ctid = (SELECT ctid FROM log WHERE a = 1 AND b = 'a' LIMIT 1);
         DELETE FROM log WHERE ctid = (SELECT ctid FROM log WHERE a = 2 AND b IS NULL LIMIT 1);
         INSERT INTO log (a, b, n, j) VALUES (3, 'c', 2, '{\"k\": 1}'), (3, 'c', 2, '{\"k\": 1}');
         UPDATE log SET a = a WHERE a = 3;
         UPDATE pairs SET y = 'q' WHERE x = 1;
         DELETE FROM pairs WHERE ctid IN (SELECT ctid FROM pairs WHERE x = 2 LIMIT 3);
         UPDATE log SET n = n + 1 WHERE b = 'bulk' AND a < 10;",
        TABLES,
    )
    .await;

    case.source
        .psql(
            "app",
            "CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF pg_trigger_depth() = 1 THEN
                     UPDATE log SET b = b || '+' WHERE a = NEW.a + 1 AND b = 'bulk';
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER bump AFTER UPDATE ON log FOR EACH ROW EXECUTE FUNCTION bump();",
        )
        .await;
    case.write_and_compare(
        "UPDATE log SET n = n * 2 WHERE b = 'bulk' AND a BETWEEN 20 AND 30;",
        TABLES,
    )
    .await;
    case.write_and_compare(
        "BEGIN; DELETE FROM log WHERE a = 40; TRUNCATE pairs; INSERT INTO pairs VALUES (1, 'again'), (1, 'again'); COMMIT;",
        TABLES,
    )
    .await;
}

/// Random inserts, duplicate inserts, single-row deletes and updates through the whole-table
/// copy: events the copy's snapshot saw are dropped, the others replayed on the copied rows.
/// The worker is held back so that the copy waits for it with writes on both sides of its
/// snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyless_copy_under_writes_ends_identical() {
    let case = Case::prepare(SCHEMA, SCHEMA, SEED).await;
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let writer = {
        let (pool, stop, committed) = (case.src.clone(), stop.clone(), committed.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(17);
            while !stop.load(Ordering::Relaxed) {
                let a = rng.gen_range(0..100);
                let sql = match rng.gen_range(0..6) {
                    0 => format!("INSERT INTO log (a, b, n, j) VALUES ({a}, 'w', 1.0, '{{}}'), ({a}, 'w', 1.0, '{{}}')"),
                    1 => format!("DELETE FROM log WHERE ctid = (SELECT ctid FROM log WHERE a = {a} LIMIT 1)"),
                    2 => format!("UPDATE log SET n = n + 0.5, b = b || 'u' WHERE ctid = (SELECT ctid FROM log WHERE a = {a} LIMIT 1)"),
                    3 => format!("UPDATE log SET n = 1.00 WHERE a = {a} AND n = 1.0"),
                    4 => format!("INSERT INTO pairs VALUES ({}, 'w')", a % 50),
                    _ => format!("DELETE FROM pairs WHERE ctid = (SELECT ctid FROM pairs WHERE x = {} LIMIT 1)", a % 50),
                };
                // Every transaction touches the keyed table too: holding it holds the worker.
                let sql = format!("{sql}; UPDATE keyed SET v = md5(v) WHERE id = {}", a + 1);
                if sqlx::raw_sql(&sql).execute(&pool).await.is_ok() {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    wait_for("writes before capture", Duration::from_secs(30), || async {
        (committed.load(Ordering::Relaxed) > 50).then_some(())
    })
    .await;
    // The worker waits on the keyed table (every batch writes it); the keyless copies read
    // their snapshot, then wait for the worker, while writes go on after their snapshots.
    let mut hold = case.dst.begin().await.unwrap();
    sqlx::query("LOCK TABLE keyed IN SHARE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    case.begin().await;
    let schema = capture_schema(&case.src).await;
    wait_for(
        "a keyless copy to read",
        Duration::from_secs(60),
        || async {
            let copied: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {}.table_state WHERE copy_position IS NOT NULL",
                quote_ident(&schema)
            ))
            .fetch_one(&case.dst)
            .await
            .unwrap_or(0);
            // Two copies run at once in the tests: the keyed one waits too.
            (copied >= 1).then_some(())
        },
    )
    .await;
    let before = committed.load(Ordering::Relaxed);
    wait_for(
        "writes after the copies' snapshots",
        Duration::from_secs(30),
        || async { (committed.load(Ordering::Relaxed) > before + 100).then_some(()) },
    )
    .await;
    hold.commit().await.unwrap();
    case.applied_past_now(true).await;
    let before = committed.load(Ordering::Relaxed);
    wait_for("writes after the copy", Duration::from_secs(30), || async {
        (committed.load(Ordering::Relaxed) > before + 100).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    case.drain_and_compare(TABLES).await;
}

/// A row removed on the source that the target does not hold means the target already differs:
/// the migration says so and stops on the table instead of going on; a resync brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyless_target_that_differs_is_said() {
    let case = Case::start(SCHEMA, SEED).await;
    case.target
        .psql("app", "DELETE FROM pairs WHERE x = 7")
        .await;
    case.source
        .psql(
            "app",
            "DELETE FROM pairs WHERE ctid = (SELECT ctid FROM pairs WHERE x = 7 LIMIT 1)",
        )
        .await;
    let m = wait_for(
        "the migration to stop on pairs",
        Duration::from_secs(60),
        || async {
            let m = case.server.migration("m").await;
            let error = m["error"].as_str().unwrap_or_default().to_string();
            (m["state"] == "error" && error.contains("not on the target")).then_some(m)
        },
    )
    .await;
    assert!(m["error"].as_str().unwrap().contains("public.pairs"), "{m}");
    let (status, body) = case
        .server
        .post("/migrations/m/tables/public.pairs/resync", json!({}))
        .await;
    assert!(status.is_success(), "{status} {body}");
    case.drain_and_compare(TABLES).await;
}

/// Verification compares a keyless table as a whole; a row changed behind pgshift's back is
/// found, repair puts the source's rows back, and the cutover's checks pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyless_tables_verify_repair_and_cut_over() {
    let case = Case::start(SCHEMA, SEED).await;
    case.target
        .psql(
            "app",
            "UPDATE log SET n = 1.00 WHERE ctid = (SELECT ctid FROM log WHERE a = 1 AND b = 'a' LIMIT 1)",
        )
        .await;
    let (status, op) = case
        .server
        .post("/migrations/m/verify", relaxed(json!({})))
        .await;
    assert_eq!(status, 202, "{op}");
    let op = wait_operation(
        &case.server,
        op["id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["result"]["differs"], true, "{op}");

    let (status, op) = case
        .server
        .post("/migrations/m/verify", relaxed(json!({"repair": true})))
        .await;
    assert_eq!(status, 202, "{op}");
    let op = wait_operation(
        &case.server,
        op["id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    case.drain_and_compare(TABLES).await;

    case.source
        .psql("app", "UPDATE log SET b = 'late' WHERE a = 5")
        .await;
    let op = cutover(&case.server, "m", relaxed(json!({"checksums": true}))).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    for (t, order) in TABLES {
        assert_same_rows(&case.src, &case.dst, t, order).await;
    }
}
