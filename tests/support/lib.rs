//! Test support for pgshift: throwaway PostgreSQL servers ([`PgCluster`]) and
//! small helpers that tests use to wait and to compare data.

pub mod case;
pub mod cluster;
pub mod cutover;
pub mod dashboard;
pub mod migrate;
pub mod server;
pub mod workload;

use std::future::Future;
use std::time::{Duration, Instant};

pub use cluster::{pg18_bin, quote_ident, PgCluster, DEFAULT_PG_BIN, DIR_PREFIX};
pub use sqlx::PgPool;

/// Installs a `tracing` fmt subscriber writing through the test writer, once
/// per process (later calls, or a subscriber set elsewhere, are fine).
/// Filter from `RUST_LOG`, default `warn,pgshift=info`.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,pgshift=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `f` every 100 ms until it returns `Some`, and returns that value.
/// Panics naming `what` once `timeout` has passed (a single call of `f` that
/// hangs past the deadline counts as expiry too). This is how tests wait:
/// never with fixed sleeps.
pub async fn wait_for<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining.max(Duration::from_millis(1)), f()).await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(_) => panic!("timed out after {timeout:?} waiting for {what} (last check hung)"),
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every row of `table` (an SQL name, e.g. `public.accounts` or `"Odd"`) as
/// its text form, via `SELECT t::text FROM <table> t ORDER BY <order_by>`,
/// for exact comparisons between a source and a target database.
pub async fn table_rows(pool: &PgPool, table: &str, order_by: &str) -> Vec<String> {
    let sql = format!("SELECT t::text FROM {table} t ORDER BY {order_by}");
    sqlx::query_scalar::<_, String>(&sql)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
