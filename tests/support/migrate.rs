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
