//! Changing the table set of a running migration (issue 10, section 3): tables added while the
//! application writes are copied, caught up and then replicated like the others; a removed table
//! loses its capture on the source (every trigger, partitions too) and its state on the target,
//! keeps its rows there, and its later writes no longer arrive; adding it again needs its old
//! rows gone (`empty_target`). Refusals, and a crash right after adding. Against real servers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift_tests::case::{Case, DRAIN};
use pgshift_tests::migrate::capture_schema;
use pgshift_tests::server::{test_settings, TestServer};
use pgshift_tests::{quote_ident, wait_for, PgPool};
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SCHEMA: &str = "
CREATE TABLE a (id int PRIMARY KEY, v text);
CREATE TABLE b (id int PRIMARY KEY, v text);
CREATE TABLE late (id bigint PRIMARY KEY, n int NOT NULL, note text);
CREATE TABLE loose (x int, y text);
CREATE TABLE parts (id int, k int NOT NULL, v text, PRIMARY KEY (id, k)) PARTITION BY RANGE (k);
CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (50);
CREATE TABLE parts_2 PARTITION OF parts FOR VALUES FROM (50) TO (100);
";

const SEED: &str = "
INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 1000) g;
INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 100) g;
INSERT INTO late SELECT g, g % 7, 'seed' FROM generate_series(1, 20000) g;
INSERT INTO loose SELECT g % 40, 'l' FROM generate_series(1, 3000) g;
INSERT INTO parts SELECT g, g % 100, 'p' FROM generate_series(1, 2000) g;
";

const ALL: &[(&str, &str)] = &[
    ("a", "id"),
    ("b", "id"),
    ("late", "id"),
    ("loose", "t::text COLLATE \"C\""),
    ("parts", "id, k"),
];

/// The migration over `a` and `b` only, synced.
async fn case_over_a_and_b() -> Case {
    let case = Case::prepare(SCHEMA, SCHEMA, SEED).await;
    case.server
        .create_and_start("m", "app", "app", Some(vec!["public.a", "public.b"]))
        .await;
    case.drain().await;
    case
}

fn names(m: &Value) -> Vec<String> {
    let mut names: Vec<String> = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// pgshift's capture triggers on `table` and on its partitions.
async fn capture_triggers(src: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger
          WHERE tgname LIKE '!pgshift%'
            AND (tgrelid = $1::regclass OR tgrelid IN (SELECT relid FROM pg_partition_tree($1::regclass)))",
    )
    .bind(table)
    .fetch_one(src)
    .await
    .unwrap()
}

/// The tables the target's bookkeeping has a state for.
async fn target_states(case: &Case) -> Vec<String> {
    let schema = quote_ident(&capture_schema(&case.src).await);
    sqlx::query_scalar(&format!(
        "SELECT table_name FROM {schema}.table_state ORDER BY table_name"
    ))
    .fetch_all(&case.dst)
    .await
    .unwrap()
}

/// Writes to `a`, `late`, `loose` and `parts` until `stop`: inserts, updates, deletes.
fn spawn_writes(src: PgPool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut done = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let id: i64 = rng.gen_range(1..30_000);
            let k: i32 = rng.gen_range(0..100);
            let statements = [
                format!("INSERT INTO late VALUES ({id}, 1, 'new') ON CONFLICT (id) DO UPDATE SET n = late.n + 1"),
                format!("UPDATE late SET note = 'w{done}' WHERE id = {}", id / 2),
                format!("DELETE FROM late WHERE id = {}", id / 3 + 1),
                format!("UPDATE a SET v = 'w{done}' WHERE id = {}", id % 1000 + 1),
                format!("INSERT INTO loose VALUES ({}, 'w')", id % 40),
                format!("DELETE FROM loose WHERE ctid = (SELECT ctid FROM loose WHERE x = {} LIMIT 1)", id % 40),
                format!("INSERT INTO parts VALUES ({id}, {k}, 'w') ON CONFLICT (id, k) DO UPDATE SET v = 'u'"),
                format!("UPDATE parts SET k = (k + 51) % 100 WHERE id = {}", id / 2),
            ];
            let mut tx = src.begin().await.unwrap();
            for sql in &statements {
                sqlx::query(sql).execute(&mut *tx).await.unwrap();
            }
            tx.commit().await.unwrap();
            done += 1;
        }
        done
    })
}

/// Adds tables during writes (copied, caught up, identical, then replicated), removes one
/// (capture gone from the source, its writes stop arriving, its rows stay, the others go on),
/// adds it again (refused while its old rows are there; copied again with `empty_target`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_are_added_and_removed_while_the_migration_runs() {
    let case = case_over_a_and_b().await;
    assert_eq!(capture_triggers(&case.src, "late").await, 0);

    let stop = Arc::new(AtomicBool::new(false));
    let writes = spawn_writes(case.src.clone(), stop.clone());
    // Some writes before the addition, so that the queue holds changes of a table not yet in
    // the migration (there are none: no capture) next to those of a.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, m) = case
        .server
        .post(
            "/migrations/m/tables",
            json!({"tables": ["public.late", "public.loose", "public.parts"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(
        names(&m),
        [
            "public.a",
            "public.b",
            "public.late",
            "public.loose",
            "public.parts"
        ],
        "{m}"
    );
    assert!(capture_triggers(&case.src, "late").await > 0);
    // The row trigger on the parent (cloned to each partition) and each relation's statement
    // triggers: 1 + 2 clones + 3 × 2.
    assert_eq!(capture_triggers(&case.src, "parts").await, 9);
    // Writes go on while the added tables copy; the migration gets to synced under them.
    wait_for("the added tables to be synced", DRAIN, || async {
        let m = case.server.migration("m").await;
        assert_ne!(m["state"], "error", "{m}");
        (m["state"] == "synced").then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let done = writes.await.unwrap();
    assert!(done > 0);
    case.drain_and_compare(ALL).await;

    // Their later changes replicate, TRUNCATE too.
    case.write_and_compare(
        "UPDATE late SET note = 'later' WHERE id % 10 = 0;
         DELETE FROM late WHERE id % 10 = 1;
         TRUNCATE loose; INSERT INTO loose VALUES (1, 'after truncate'), (1, 'after truncate');
         UPDATE parts SET k = 99 - k WHERE id % 5 = 0;",
        ALL,
    )
    .await;

    // Removing late: no capture left on the source, no state on the target, its rows stay.
    let rows_before: i64 = Case::count(&case.dst, "SELECT count(*) FROM late").await;
    let (status, m) = case.server.delete("/migrations/m/tables/public.late").await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(
        names(&m),
        ["public.a", "public.b", "public.loose", "public.parts"],
        "{m}"
    );
    assert_eq!(capture_triggers(&case.src, "late").await, 0);
    let schema = capture_schema(&case.src).await;
    let functions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = $1 AND p.proname ~ '^(capture|statement_bound)_[0-9]+$'",
    )
    .bind(&schema)
    .fetch_one(&case.src)
    .await
    .unwrap();
    assert_eq!(
        functions,
        2 * 4,
        "two functions for each of the four tables left"
    );
    assert!(!target_states(&case)
        .await
        .contains(&"public.late".to_string()));
    assert_eq!(
        Case::count(&case.dst, "SELECT count(*) FROM late").await,
        rows_before
    );

    // Partitioned tables lose the triggers on every partition.
    let (status, m) = case
        .server
        .delete("/migrations/m/tables/public.parts")
        .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(capture_triggers(&case.src, "parts").await, 0);

    // Its writes no longer reach the target; the other tables still replicate.
    case.write_and_compare(
        "UPDATE late SET note = 'after removal';
         INSERT INTO late VALUES (100001, 1, 'after removal');
         UPDATE parts SET v = 'after removal';
         UPDATE a SET v = 'still replicated' WHERE id <= 10;
         INSERT INTO b VALUES (1001, 'still');",
        &[("a", "id"), ("b", "id"), ("loose", "t::text COLLATE \"C\"")],
    )
    .await;
    assert_eq!(
        Case::count(
            &case.dst,
            "SELECT count(*) FROM late WHERE note = 'after removal'"
        )
        .await,
        0
    );
    assert_eq!(
        Case::count(
            &case.dst,
            "SELECT count(*) FROM parts WHERE v = 'after removal'"
        )
        .await,
        0
    );

    // Adding it again: its old rows are on the target, and pgshift does not delete them unasked.
    let (status, body) = case
        .server
        .post("/migrations/m/tables", json!({"tables": ["public.late"]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "target_not_empty", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("public.late"));
    assert_eq!(capture_triggers(&case.src, "late").await, 0);
    let (status, m) = case
        .server
        .post(
            "/migrations/m/tables",
            json!({"tables": ["public.late"], "empty_target": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    case.write_and_compare(
        "UPDATE late SET note = 'back' WHERE id % 3 = 0;",
        &[("a", "id"), ("b", "id"), ("late", "id")],
    )
    .await;
    // A new number for it: the old one's events may still have been queued.
    let numbers: Vec<String> = sqlx::query_scalar(
        "SELECT substring(tgname from '_([0-9]+)$') FROM pg_trigger
          WHERE tgrelid = 'late'::regclass AND tgname LIKE '!pgshift%' AND tgname NOT LIKE '%\\_truncate' AND tgname NOT LIKE '%\\_end'",
    )
    .fetch_all(&case.src)
    .await
    .unwrap();
    assert_eq!(
        numbers,
        ["6"],
        "late was number 3; a, b, loose, parts 1, 2, 4, 5"
    );

    let (status, audit) = case.server.get("/audit?migration=m").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"migration.tables.add"), "{actions:?}");
    assert!(actions.contains(&"migration.tables.remove"), "{actions:?}");
}

/// What is refused, with its code: an unknown table, patterns that add nothing, the last table,
/// and both changes while an operation runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_of_the_table_set_are_refused_with_reasons() {
    let case = case_over_a_and_b().await;
    let server = &case.server;

    let (status, body) = server.delete("/migrations/m/tables/public.late").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = server.delete("/migrations/nope/tables/public.a").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    for (patterns, code) in [
        (json!(["public.nothing_*"]), "pattern_matches_nothing"),
        (json!(["public.a"]), "already_in_migration"),
        (json!(["public.late", "public.b"]), "already_in_migration"),
        (json!([]), "no_tables"),
    ] {
        let (status, body) = server
            .post("/migrations/m/tables", json!({"tables": patterns}))
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{patterns}: {body}"
        );
        assert_eq!(body["error"]["code"], code, "{patterns}: {body}");
    }
    // Nothing of a refused request went in.
    assert_eq!(capture_triggers(&case.src, "late").await, 0);
    assert_eq!(
        names(&server.migration("m").await),
        ["public.a", "public.b"]
    );

    // While a verification runs (held on a table the test locks on the target).
    let mut hold = case.dst.begin().await.unwrap();
    sqlx::query("LOCK TABLE b IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let (status, started) = server.post("/migrations/m/verify", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let (status, body) = server
        .post("/migrations/m/tables", json!({"tables": ["public.late"]}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "operation_running", "{body}");
    let (status, body) = server.delete("/migrations/m/tables/public.b").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "operation_running", "{body}");
    hold.rollback().await.unwrap();
    pgshift_tests::cutover::wait_operation(server, &id, DRAIN).await;

    // The last table cannot go: the migration would replicate nothing.
    let (status, body) = server.delete("/migrations/m/tables/public.b").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.delete("/migrations/m/tables/public.a").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "last_table", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("remove the migration"));
    case.write_and_compare("UPDATE a SET v = 'one table'", &[("a", "id")])
        .await;
}

/// Schema "create": an added table is built on the target; pgshift crashes right after adding
/// it, and the new process copies it to the end (resuming where the copy stood) while writes go
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_right_after_adding_a_table_resumes_its_copy() {
    let case = Case::prepare(SCHEMA, "", SEED).await;
    let (status, body) = case
        .server
        .post(
            "/migrations",
            json!({
                "name": "m",
                "source": {"cluster": "source", "database": "app"},
                "target": {"cluster": "target", "database": "app"},
                "tables": ["public.a"],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["schema"], "create", "{body}");
    let (status, body) = case.server.post("/migrations/m/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    case.drain().await;

    let (status, m) = case
        .server
        .post("/migrations/m/tables", json!({"tables": ["public.late"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    // Built on the target with its key before the copy.
    let key: i64 = Case::count(
        &case.dst,
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'late'::regclass AND contype = 'p'",
    )
    .await;
    assert_eq!(key, 1);
    let dir = case.server.crash();
    case.source
        .psql(
            "app",
            "UPDATE late SET note = 'after crash' WHERE id % 4 = 0;
             DELETE FROM late WHERE id % 9 = 0;
             INSERT INTO late SELECT g, 3, 'crash' FROM generate_series(30001, 30500) g;",
        )
        .await;
    let server = TestServer::start_in(&dir, test_settings()).await;
    let m = pgshift_tests::migrate::wait_drained(&server, "m", &case.src, DRAIN).await;
    assert_eq!(names(&m), ["public.a", "public.late"], "{m}");
    for (table, order) in [("a", "id"), ("late", "id")] {
        pgshift_tests::migrate::assert_same_rows(&case.src, &case.dst, table, order).await;
    }
    case.source
        .psql("app", "UPDATE late SET n = n + 100 WHERE id < 50")
        .await;
    pgshift_tests::migrate::wait_drained(&server, "m", &case.src, DRAIN).await;
    pgshift_tests::migrate::assert_same_rows(&case.src, &case.dst, "late", "id").await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
