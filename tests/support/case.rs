//! A source and a target server with the same (or a given) schema and one migration "m" between
//! them: the shape of most engine tests. `start` waits until every table is synced;
//! `begin_with_copy_paused` holds copies at a known point so that writes land between a chunk's
//! snapshot and its merge.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::migrate::{assert_same_rows, capture_schema};
use crate::server::TestServer;
use crate::{init_tracing, quote_ident, wait_for, PgCluster, PgPool};

/// How long a test waits for a migration to drain.
pub const DRAIN: Duration = Duration::from_secs(120);

/// Two servers, a schema on each, a seed on the source, and a running migration.
pub struct Case {
    pub source: PgCluster,
    pub target: PgCluster,
    pub src: PgPool,
    pub dst: PgPool,
    pub server: TestServer,
}

impl Case {
    /// A number the source or target answers (`count(*)` and the like).
    pub async fn count(pool: &PgPool, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
    }

    /// Waits until pgshift's source watch has recorded the partitions as `names` (it looks once
    /// per idle interval), so that what it sent is in the event stream before a drain.
    pub async fn wait_partitions(&self, names: &[&str]) {
        let schema = quote_ident(&capture_schema(&self.src).await);
        let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        want.sort();
        wait_for("the source watch to follow the partitions", DRAIN, || {
            let (want, schema) = (want.clone(), schema.clone());
            async move {
                let now: Vec<String> = sqlx::query_scalar(&format!(
                    "SELECT name FROM {schema}.partition ORDER BY name"
                ))
                .fetch_all(&self.src)
                .await
                .unwrap();
                (now == want).then_some(())
            }
        })
        .await;
    }

    /// The same schema on both sides; waits until every table is synced.
    pub async fn start(schema: &str, seed: &str) -> Self {
        let case = Self::prepare(schema, schema, seed).await;
        case.begin().await;
        case.drain().await;
        case
    }

    /// Clusters, databases, schemas and seed; no migration yet.
    pub async fn prepare(source_schema: &str, target_schema: &str, seed: &str) -> Self {
        init_tracing();
        let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
        source.create_database("app").await;
        target.create_database("app").await;
        source.psql("app", source_schema).await;
        target.psql("app", target_schema).await;
        if !seed.is_empty() {
            source.psql("app", seed).await;
        }
        let src = source.connect("app").await;
        let dst = target.connect("app").await;
        let server = TestServer::start().await;
        server.add_cluster("source", &source.admin_dsn()).await;
        server.add_cluster("target", &target.admin_dsn()).await;
        Case {
            source,
            target,
            src,
            dst,
            server,
        }
    }

    /// Creates and starts migration "m" over every table.
    pub async fn begin(&self) {
        self.server.create_and_start("m", "app", "app", None).await;
    }

    pub async fn newest_tick(&self) -> i64 {
        let schema = capture_schema(&self.src).await;
        wait_for("the newest tick", Duration::from_secs(30), || async {
            sqlx::query_scalar(&format!(
                "SELECT max(tick_id) FROM {}.tick",
                quote_ident(&schema)
            ))
            .fetch_one(&self.src)
            .await
            .ok()
        })
        .await
    }

    /// Waits until the target applied a tick newer than every tick that exists now (so every
    /// write committed before the call is applied), whatever the tables' copy states. Panics
    /// with the migration's error as soon as it keeps failing.
    pub async fn applied_past_now(&self, synced: bool) -> Value {
        let newest = self.newest_tick().await;
        let start = Instant::now();
        let mut failing_since: Option<Instant> = None;
        loop {
            let m = self.server.migration("m").await;
            let applied = m["applied_tick"].as_i64().unwrap_or(0);
            if applied > newest && (!synced || m["state"] == "synced") {
                return m;
            }
            // Retries go through "starting" between failures: count from the first failure.
            if m["state"] == "error" {
                let error = m["error"].as_str().unwrap_or_default().to_string();
                match &failing_since {
                    Some(since) if since.elapsed() > Duration::from_secs(8) => {
                        panic!("the migration keeps failing instead of draining: {error}\n{m}")
                    }
                    Some(_) => {}
                    None => failing_since = Some(Instant::now()),
                }
            }
            if start.elapsed() > DRAIN {
                panic!("timed out waiting for the migration to drain past tick {newest}: {m}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn drain(&self) -> Value {
        self.applied_past_now(true).await
    }

    pub async fn write_and_compare(&self, sql: &str, tables: &[(&str, &str)]) {
        self.source.psql("app", sql).await;
        self.drain_and_compare(tables).await;
    }

    pub async fn drain_and_compare(&self, tables: &[(&str, &str)]) {
        self.drain().await;
        for (table, order) in tables {
            assert_same_rows(&self.src, &self.dst, table, order).await;
        }
    }

    /// Holds a ROW EXCLUSIVE lock on `tables` on the target. The copy of such a table waits for
    /// it (SHARE ROW EXCLUSIVE) while holding one of the two copy permits (copy_parallelism = 2
    /// in the test settings). The worker must not write these tables meanwhile: its ROW
    /// EXCLUSIVE request would queue behind the copy's.
    pub async fn hold_copy(&self, tables: &[&str]) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut tx = self.dst.begin().await.unwrap();
        sqlx::query(&format!(
            "LOCK TABLE {} IN ROW EXCLUSIVE MODE",
            tables.join(", ")
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx
    }

    /// Waits until at least `n` lock requests on `tables` wait on the target.
    pub async fn wait_waiters(&self, tables: &[&str], n: i64) {
        let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        wait_for(
            &format!("{n} lock requests on {tables:?} to wait"),
            Duration::from_secs(60),
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_locks
                      WHERE relation = ANY (SELECT t::regclass FROM unnest($1::text[]) t) AND NOT granted",
                )
                .bind(&names)
                .fetch_one(&self.dst)
                .await
                .unwrap();
                (waiting >= n).then_some(())
            },
        )
        .await;
    }

    /// Starts the migration and pauses the copies of `tables` (at most two run at once) right
    /// after they took the snapshot of their second chunk, and the worker at the end of a batch
    /// taken before those snapshots. Writes made now are applied by the worker before those
    /// chunks are merged; [`Case::resume`] lets both go on.
    pub async fn begin_with_copy_paused(
        &self,
        tables: &[&str],
    ) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let in_flight = tables.len().min(2) as i64;
        // 1. The copies wait for the table lock in their first chunk.
        let hold = self.hold_copy(tables).await;
        self.begin().await;
        self.wait_waiters(tables, in_flight).await;
        // 2. The worker waits at the end of its next batch (its UPDATE of the applied tick).
        let schema = capture_schema(&self.src).await;
        let applied = format!("{}.applied", quote_ident(&schema));
        let mut hold_applied = self.dst.begin().await.unwrap();
        sqlx::query(&format!("LOCK TABLE {applied} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut *hold_applied)
            .await
            .unwrap();
        self.wait_waiters(&[&applied], 1).await;
        // 3. The copies merge their first chunk, take the second chunk's snapshot and wait for
        //    the worker to pass it (they poll the applied tick).
        hold.commit().await.unwrap();
        self.wait_waiters(&[&applied], 1 + in_flight).await;
        hold_applied
    }

    /// Lets the worker and the copies paused by [`Case::begin_with_copy_paused`] go on, once a
    /// tick after every write made so far exists: the worker's next batch then covers both the
    /// copies' snapshots and the writes.
    pub async fn resume(&self, hold_applied: sqlx::Transaction<'static, sqlx::Postgres>) {
        let after = self.newest_tick().await;
        wait_for(
            "a tick after the writes",
            Duration::from_secs(30),
            || async { (self.newest_tick().await > after).then_some(()) },
        )
        .await;
        hold_applied.commit().await.unwrap();
    }
}
