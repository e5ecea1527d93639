//! The cutover's `wraparound` gate (issue 13): an anti-wraparound autovacuum is never cancelled
//! by a lock request, so a freeze that met one would wait behind it (and every writer of the
//! table behind the freeze) until its lock timeout. A migrated table, or a partition of one,
//! whose transaction ID or multixact age is past the limit that makes autovacuum vacuum it to
//! prevent wraparound fails the preflight, named with the action, before anything is frozen.
//!
//! The limits are the tables' own reloptions at their minimums (100,000 transaction IDs,
//! 10,000 multixacts); the ages are made real by consuming that many in a scratch database
//! of the same server (both counters are server-wide).

use pgshift_tests::cutover::{
    cutover, freeze_installed, gate, pair, relaxed, start_synced, step_names, try_write,
};
use pgshift_tests::init_tracing;
use pgshift_tests::server::TestServer;
use serde_json::json;
use sqlx::Acquire;

/// A partitioned table beside the harness's schema, on both sides: its parent has no
/// relfrozenxid of its own (0, whose age reads as 2^31 - 1), and must not count as due.
const PARTITIONED: &str = "CREATE TABLE reading (id bigint NOT NULL, day date NOT NULL, v integer,
                               PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
                           CREATE TABLE reading_2026 PARTITION OF reading
                               FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');";

/// Consumes transaction IDs and multixacts in separate transactions: each multixact comes from
/// one more transaction sharing a row lock with the session that `hold_multixact_row` leaves
/// open.
const BURN: &str = "CREATE TABLE one (id integer PRIMARY KEY);
                    INSERT INTO one VALUES (1);
                    CREATE PROCEDURE burn_xids(n integer) LANGUAGE plpgsql AS $$
                    BEGIN
                        FOR i IN 1..n LOOP PERFORM pg_catalog.txid_current(); COMMIT; END LOOP;
                    END $$;
                    CREATE PROCEDURE burn_multixacts(n integer) LANGUAGE plpgsql AS $$
                    BEGIN
                        FOR i IN 1..n LOOP PERFORM 1 FROM one WHERE id = 1 FOR SHARE; COMMIT; END LOOP;
                    END $$;";

/// Runs `CALL {call}` in the scratch database without waiting for each commit to be flushed
/// (the procedure commits once per iteration).
async fn burn(pool: &sqlx::PgPool, call: &str) {
    let mut conn = pool.acquire().await.unwrap();
    let conn = conn.acquire().await.unwrap();
    sqlx::raw_sql("SET synchronous_commit = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql(&format!("CALL {call}"))
        .execute(&mut *conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_due_for_an_anti_wraparound_vacuum_fails_the_preflight() {
    init_tracing();
    let pair = pair(50).await;
    pair.source.psql("app", PARTITIONED).await;
    pair.target.psql("app", PARTITIONED).await;
    pair.source.create_database("scratch").await;
    pair.source.psql("scratch", BURN).await;
    let scratch = pair.source.connect("scratch").await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let op = cutover(&server, "shop", relaxed(json!({"dry_run": true}))).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let passed = gate(&op, "wraparound");
    assert_eq!(passed["passed"], true, "{passed}");

    // A partition at the lowest transaction ID limit, another table at the lowest multixact
    // limit. Autovacuum would soon vacuum them for real (and advance their ages): a lock that
    // conflicts with VACUUM, held meanwhile, keeps each as the ages make it.
    pair.source
        .psql(
            "app",
            "ALTER TABLE reading_2026 SET (autovacuum_freeze_max_age = 100000);
             ALTER TABLE ledger SET (autovacuum_multixact_freeze_max_age = 10000);",
        )
        .await;
    let mut no_vacuum = pair.src.begin().await.unwrap();
    sqlx::query("LOCK TABLE reading_2026, ledger IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut *no_vacuum)
        .await
        .unwrap();
    let mut multixact_row = scratch.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM one WHERE id = 1 FOR SHARE")
        .execute(&mut *multixact_row)
        .await
        .unwrap();
    burn(&scratch, "burn_multixacts(10100)").await;
    burn(&scratch, "burn_xids(100100)").await;

    let op = cutover(&server, "shop", relaxed(json!({}))).await;
    assert_eq!(op["state"], "failed", "{op}");
    assert_eq!(step_names(&op), ["preflight"], "{op}");
    let failed = gate(&op, "wraparound");
    assert_eq!(failed["passed"], false, "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("public.reading_2026 (transaction ID age"),
        "{reason}"
    );
    assert!(
        reason.contains("over autovacuum_freeze_max_age 100000"),
        "{reason}"
    );
    assert!(reason.contains("public.ledger (multixact age"), "{reason}");
    assert!(
        reason.contains("over autovacuum_multixact_freeze_max_age 10000"),
        "{reason}"
    );
    assert!(
        reason.contains("run VACUUM (FREEZE) on public.ledger, public.reading_2026 first"),
        "{reason}"
    );
    // Neither the tables still under their limits nor the partitioned parent.
    for other in ["public.item", "Odd Pair", "public.reading "] {
        assert!(!reason.contains(other), "{other}: {reason}");
    }
    assert!(op["error"].as_str().unwrap().contains("wraparound"), "{op}");
    // Nothing was frozen.
    assert!(!freeze_installed(&pair.src).await);
    try_write(&pair.src).await.unwrap();

    // The action the gate names clears it.
    multixact_row.commit().await.unwrap();
    no_vacuum.rollback().await.unwrap();
    pair.source
        .psql("app", "VACUUM (FREEZE) reading_2026, ledger")
        .await;
    let op = cutover(&server, "shop", relaxed(json!({"dry_run": true}))).await;
    let cleared = gate(&op, "wraparound");
    assert_eq!(cleared["passed"], true, "{op}");
}
