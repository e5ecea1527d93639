//! Rotation of the source's three event tables, driven step by step against a real PostgreSQL
//! server with a writer's transaction held open across the switch. The ticker's steps are called
//! directly, so nothing depends on timing: an event table may be truncated only once the worker
//! has applied a tick that sees every transaction that wrote it.
//!
//! The cluster runs without autovacuum, so no background transaction takes a txid between the
//! steps: the txids and snapshots below are exactly those the steps produce.

use chrono::Utc;
use pgshift::engine::{install_capture, rotation};
use pgshift::store::{ColumnSpec, DesiredState, Endpoint, MigrationRecord, TableSpec};
use pgshift_tests::{init_tracing, quote_ident, PgCluster, PgPool};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

struct Source {
    cluster: PgCluster,
    pool: PgPool,
    /// pgshift's capture schema, unquoted.
    schema: String,
}

impl Source {
    /// A source database with one captured table, `account`, and the first tick taken.
    async fn start() -> Source {
        let cluster = PgCluster::start_with(&[("autovacuum", "off")]).await;
        cluster.create_database("app").await;
        cluster
            .psql(
                "app",
                "CREATE TABLE account (id integer PRIMARY KEY, balance integer NOT NULL)",
            )
            .await;
        let column = |name: &str| ColumnSpec {
            name: name.into(),
            type_name: "integer".into(),
            generated: false,
            identity_always: false,
        };
        let endpoint = Endpoint {
            cluster_id: Uuid::new_v4(),
            database: "app".into(),
        };
        let record = MigrationRecord {
            id: Uuid::new_v4(),
            name: "rotation".into(),
            source: endpoint.clone(),
            target: endpoint,
            table_patterns: None,
            tables: vec![TableSpec {
                no: 1,
                schema: "public".into(),
                name: "account".into(),
                key: vec!["id".into()],
                key_index: None,
                columns: vec![column("id"), column("balance")],
                partitioned: false,
            }],
            desired_state: DesiredState::Running,
            last_error: None,
            schema_mode: Default::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let mut conn = session(&cluster).await;
        install_capture(&mut conn, &record)
            .await
            .expect("install capture");
        conn.close().await.expect("close");
        let pool = cluster.connect("app").await;
        Source {
            cluster,
            pool,
            schema: record.schema_name(),
        }
    }

    fn q(&self) -> String {
        quote_ident(&self.schema)
    }

    /// Takes a tick the way the ticker does and returns its snapshot.
    async fn tick(&self) -> String {
        let id: i64 = sqlx::query_scalar(&format!("SELECT {}.tick()", self.q()))
            .fetch_one(&self.pool)
            .await
            .expect("tick");
        self.tick_snapshot(id).await
    }

    async fn tick_snapshot(&self, id: i64) -> String {
        sqlx::query_scalar(&format!(
            "SELECT tick_snapshot::text FROM {}.tick WHERE tick_id = $1",
            self.q()
        ))
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .expect("tick snapshot")
    }

    /// Events of transaction `txid` in the queue, as (event table, count), seen by a committed
    /// reader.
    async fn events_of(&self, txid: i64) -> Vec<(i16, i64)> {
        events_of(&self.pool, &self.schema, txid).await
    }

    /// How many events the batch between two ticks holds (PgQ's membership rule: visible in
    /// the newer snapshot and not in the older one).
    async fn batch_len(&self, older: &str, newer: &str) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}.event
              WHERE txid_visible_in_snapshot(ev_txid, $2::txid_snapshot)
                AND NOT txid_visible_in_snapshot(ev_txid, $1::txid_snapshot)",
            self.q()
        ))
        .bind(older)
        .bind(newer)
        .fetch_one(&self.pool)
        .await
        .expect("batch length")
    }

    async fn free(&self, applied_snapshot: &str) -> Vec<i16> {
        rotation::free_event_tables(&self.pool, &self.schema, applied_snapshot)
            .await
            .expect("free event tables")
    }

    async fn current(&self) -> i16 {
        rotation::current_event_table(&self.pool, &self.schema)
            .await
            .expect("current event table")
    }
}

/// One dedicated connection to database `app`, for a session that holds its transaction open.
async fn session(cluster: &PgCluster) -> PgConnection {
    PgConnection::connect(&cluster.dsn("app"))
        .await
        .unwrap_or_else(|e| panic!("connect to app: {e}"))
}

/// Events of transaction `txid` in the queue, as (event table, count), as `executor` sees them
/// (the writer's own session sees them before it commits).
async fn events_of<'c, E>(executor: E, schema: &str, txid: i64) -> Vec<(i16, i64)>
where
    E: sqlx::PgExecutor<'c>,
{
    sqlx::query_as(&format!(
        "SELECT ev_gen, count(*) FROM {}.event WHERE ev_txid = $1 GROUP BY ev_gen ORDER BY ev_gen",
        quote_ident(schema)
    ))
    .bind(txid)
    .fetch_all(executor)
    .await
    .expect("count events")
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::query(sql)
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn txid(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(conn)
        .await
        .expect("txid_current")
}

/// A transaction writes the current event table, the ticker switches to the next one while it
/// is still open, and the writer writes again (into the new table) and commits. Its first event
/// must survive until the worker has applied a tick that sees the writer committed: freeing the
/// table earlier would lose the first row and apply the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_open_across_the_switch_keeps_its_events_until_applied() {
    init_tracing();
    let src = Source::start().await;
    let first_tick = src.tick_snapshot(1).await;
    assert_eq!(src.current().await, 0);

    let mut writer = session(&src.cluster).await;
    exec(&mut writer, "BEGIN").await;
    exec(&mut writer, "INSERT INTO account VALUES (1, 100)").await;
    let writer_txid = txid(&mut writer).await;

    assert_eq!(
        rotation::rotate(&src.pool, &src.schema)
            .await
            .expect("rotate"),
        Some(1),
        "the next event table was free, so the switch happens"
    );
    assert_eq!(src.current().await, 1);
    exec(&mut writer, "INSERT INTO account VALUES (2, 200)").await;
    assert_eq!(
        events_of(&mut writer, &src.schema, writer_txid).await,
        vec![(0, 1), (1, 1)],
        "the first row went to event_0, the second to event_1"
    );

    // The worker applies a tick taken while the writer is still running (its batch does not
    // hold the writer's events).
    let running = src.tick().await;
    assert_eq!(src.batch_len(&first_tick, &running).await, 0);
    assert_eq!(src.free(&running).await, Vec::<i16>::new());

    exec(&mut writer, "COMMIT").await;
    // Committed, but the applied tick does not see it: nothing of it may go.
    assert_eq!(
        src.free(&running).await,
        Vec::<i16>::new(),
        "event_0 was freed while transaction {writer_txid}, which wrote it, was not applied"
    );
    assert_eq!(
        src.events_of(writer_txid).await,
        vec![(0, 1), (1, 1)],
        "an event was lost"
    );
    let committed = src.tick().await;
    assert_eq!(
        src.batch_len(&running, &committed).await,
        2,
        "the batch after the writer's commit holds both of its rows"
    );

    // The worker applied the tick that sees the writer: event_0 can go now.
    assert_eq!(src.free(&committed).await, vec![0]);
    assert_eq!(
        src.events_of(writer_txid).await,
        vec![(1, 1)],
        "event_1 keeps the second row"
    );
}

/// A rotation interrupted between the switch and recording its bound (an old ticker killed
/// inside its rotation transaction: the sequence moved, the transaction rolled back) is
/// bounded later by the recovery path, which must be just as safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_interrupted_before_its_bound_is_bounded_safely() {
    init_tracing();
    let src = Source::start().await;
    let first_tick = src.tick_snapshot(1).await;
    let q = src.q();

    // The interrupted ticker took its txid first, then the writer its own, above it.
    let mut ticker = session(&src.cluster).await;
    exec(&mut ticker, "BEGIN").await;
    txid(&mut ticker).await;
    let mut writer = session(&src.cluster).await;
    exec(&mut writer, "BEGIN").await;
    exec(&mut writer, "INSERT INTO account VALUES (1, 100)").await;
    let writer_txid = txid(&mut writer).await;
    // The switch does not roll back: sequences are not transactional.
    exec(
        &mut ticker,
        &format!(
            "SELECT setval('{q}.generation_seq', (SELECT last_value FROM {q}.generation_seq) + 1, true)"
        ),
    )
    .await;
    exec(&mut ticker, "ROLLBACK").await;
    assert_eq!(src.current().await, 1);

    // The next ticker finds event_0 retired without a bound and bounds it.
    assert_eq!(src.free(&first_tick).await, Vec::<i16>::new());
    exec(&mut writer, "INSERT INTO account VALUES (2, 200)").await;
    let running = src.tick().await;
    assert_eq!(src.free(&running).await, Vec::<i16>::new());
    exec(&mut writer, "COMMIT").await;
    assert_eq!(
        src.free(&running).await,
        Vec::<i16>::new(),
        "event_0 was freed while transaction {writer_txid}, which wrote it, was not applied"
    );
    assert_eq!(
        src.events_of(writer_txid).await,
        vec![(0, 1), (1, 1)],
        "an event was lost"
    );

    let committed = src.tick().await;
    assert_eq!(src.batch_len(&running, &committed).await, 2);
    assert_eq!(src.free(&committed).await, vec![0]);

    // The queue rotates on from there: event_1 is in use, event_2 and then event_0 are free.
    assert_eq!(
        rotation::rotate(&src.pool, &src.schema)
            .await
            .expect("rotate"),
        Some(2)
    );
    let after = src.tick().await;
    assert_eq!(src.free(&after).await, vec![1]);
    assert_eq!(
        rotation::rotate(&src.pool, &src.schema)
            .await
            .expect("rotate"),
        Some(0)
    );
    assert_eq!(src.events_of(writer_txid).await, vec![]);
}

/// A rotation interrupted after preparing the next event table and before switching to it
/// leaves a table that is neither current nor free: it is bounded, emptied like a retired one
/// and taken by the next rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_interrupted_before_its_switch_completes_later() {
    init_tracing();
    let src = Source::start().await;
    let q = src.q();
    src.cluster
        .psql(
            "app",
            &format!("UPDATE {q}.generation SET truncated = false WHERE gen = 1"),
        )
        .await;
    assert_eq!(
        rotation::rotate(&src.pool, &src.schema)
            .await
            .expect("rotate"),
        None,
        "event_1 is not known to be empty"
    );
    let before = src.tick().await;
    assert_eq!(src.free(&before).await, Vec::<i16>::new());
    let bounded = src.tick().await;
    assert_eq!(src.free(&bounded).await, vec![1]);
    assert_eq!(
        rotation::rotate(&src.pool, &src.schema)
            .await
            .expect("rotate"),
        Some(1)
    );
    assert_eq!(src.current().await, 1);
}
