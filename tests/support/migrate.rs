//! Helpers for replication tests: waiting until a migration has drained, and comparing every
//! row of the source and the target.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::server::TestServer;
use crate::{table_rows, wait_for};

/// The capture schema pgshift installed in a source database (one migration per database).
/// Waits for it: a migration's start returns before its run has installed capture.
pub async fn capture_schema(source: &PgPool) -> String {
    wait_for("pgshift's capture schema on the source", Duration::from_secs(60), || async {
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'pgshift\\_%' ORDER BY 1 LIMIT 1")
            .fetch_optional(source)
            .await
            .ok()
            .flatten()
    })
    .await
}

/// Waits until every table is synced and the target has applied a tick newer than every tick
/// that exists now: the ticker takes that tick after this call, so every write committed
/// before the call is on the target.
pub async fn wait_drained(
    server: &TestServer,
    name: &str,
    source: &PgPool,
    timeout: Duration,
) -> Value {
    let schema = capture_schema(source).await;
    let newest: i64 = wait_for("the newest tick", Duration::from_secs(30), || async {
        sqlx::query_scalar(&format!(
            "SELECT max(tick_id) FROM {}.tick",
            crate::quote_ident(&schema)
        ))
        .fetch_one(source)
        .await
        .ok()
    })
    .await;
    wait_for(
        &format!("migration {name} to apply a tick after {newest} with every table synced"),
        timeout,
        || async {
            let m = server.migration(name).await;
            let applied = m["applied_tick"].as_i64().unwrap_or(0);
            (m["state"] == "synced" && applied > newest).then_some(m)
        },
    )
    .await
}

/// Asserts that `table` has exactly the same rows on both sides.
pub async fn assert_same_rows(
    source: &PgPool,
    target: &PgPool,
    table: &str,
    order_by: &str,
) -> usize {
    let a = table_rows(source, table, order_by).await;
    let b = table_rows(target, table, order_by).await;
    if a != b {
        let first = a
            .iter()
            .zip(b.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        panic!(
            "{table} differs: source has {} rows, target {}; first difference at row {first}:\n  source: {:?}\n  target: {:?}",
            a.len(),
            b.len(),
            a.get(first),
            b.get(first)
        );
    }
    a.len()
}

/// Waits until pgshift's source watch has followed every partition that came, went, or was
/// attached again on the source (its recorded list equals every partitioned table's partitions
/// and their pg_inherits rows, and no noted partition waits): what the watch sends is then in
/// the event stream, and a drain that follows sees it applied.
pub async fn wait_partitions_followed(source: &PgPool) {
    let schema = crate::quote_ident(&capture_schema(source).await);
    let sql = format!(
        "WITH now AS (
             SELECT p.relid, (SELECT i.xmin::text FROM pg_inherits i WHERE i.inhrelid = p.relid) AS attached
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               CROSS JOIN LATERAL pg_partition_tree(c.oid) p
              WHERE c.relkind = 'p' AND NOT c.relispartition AND n.nspname !~ '^pgshift_'
                AND p.level > 0),
              seen AS (SELECT relid, attached FROM {schema}.partition)
         SELECT NOT EXISTS (SELECT * FROM now EXCEPT SELECT * FROM seen)
            AND NOT EXISTS (SELECT * FROM seen EXCEPT SELECT * FROM now)
            AND NOT EXISTS (SELECT 1 FROM {schema}.partition_seen)"
    );
    wait_for(
        "the source watch to follow the partitions",
        Duration::from_secs(120),
        || async {
            let followed: bool = sqlx::query_scalar(&sql).fetch_one(source).await.unwrap();
            followed.then_some(())
        },
    )
    .await;
}
