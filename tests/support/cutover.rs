//! Helpers for cutover and verification tests (and the cutover benchmark): a small schema with
//! sequences, identity and composite keys, writers that count what they committed, and waiting
//! for operations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::migrate::assert_same_rows;
use crate::server::TestServer;
use crate::{wait_for, PgCluster};

/// Created identically on both sides.
pub const SCHEMA: &str = r#"
CREATE TABLE item (
    id     bigserial PRIMARY KEY,
    writer integer NOT NULL,
    n      integer NOT NULL,
    note   text,
    score  double precision,
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE ledger (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item_id bigint NOT NULL,
    amount  numeric NOT NULL
);
CREATE TABLE "Odd Pair" (
    k1 integer,
    k2 text,
    v  jsonb,
    PRIMARY KEY (k1, k2)
);
CREATE SEQUENCE invoice_no;
"#;

/// Tables of [`SCHEMA`] with the order that makes row lists comparable.
pub const TABLES: [(&str, &str); 3] =
    [("item", "id"), ("ledger", "id"), ("\"Odd Pair\"", "k1, k2")];

pub struct Pair {
    pub source: PgCluster,
    pub target: PgCluster,
    pub src: PgPool,
    pub dst: PgPool,
}

/// Two servers with [`SCHEMA`] in database `app`, the source seeded with `rows` items.
pub async fn pair(rows: i64) -> Pair {
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    source.psql("app", SCHEMA).await;
    target.psql("app", SCHEMA).await;
    let src = source.connect("app").await;
    let dst = target.connect("app").await;
    sqlx::raw_sql(&format!(
        "INSERT INTO item (writer, n, note, score) SELECT 0, g, 'seed ' || g, g / 7.0 FROM generate_series(1, {rows}) g;
         INSERT INTO ledger (item_id, amount) SELECT id, id * 1.5 FROM item;
         INSERT INTO \"Odd Pair\" SELECT g, 'k' || g, jsonb_build_object('g', g) FROM generate_series(1, {rows}) g;
         SELECT nextval('invoice_no') FROM generate_series(1, 42);"
    ))
    .execute(&src)
    .await
    .expect("seeding the source");
    Pair {
        source,
        target,
        src,
        dst,
    }
}

/// Registers both servers (as `source` and `target`), creates and starts migration `name` and
/// waits until every table is synced.
pub async fn start_synced(server: &TestServer, pair: &Pair, name: &str) {
    server.add_cluster("source", &pair.source.admin_dsn()).await;
    server.add_cluster("target", &pair.target.admin_dsn()).await;
    server.create_and_start(name, "app", "app", None).await;
    wait_synced(server, name).await;
}

pub async fn wait_synced(server: &TestServer, name: &str) -> Value {
    wait_for(
        &format!("migration {name} to be synced"),
        Duration::from_secs(120),
        || async {
            let m = server.migration(name).await;
            (m["state"] == "synced" && m["lag_seconds"].is_number()).then_some(m)
        },
    )
    .await
}

/// Asserts that every table of [`SCHEMA`] holds the same rows on both pools.
pub async fn assert_same(a: &PgPool, b: &PgPool) {
    for (table, order) in TABLES {
        assert_same_rows(a, b, table, order).await;
    }
}

/// Polls an operation until it is no longer running.
pub async fn wait_operation(server: &TestServer, id: &str, timeout: Duration) -> Value {
    wait_for(&format!("operation {id} to finish"), timeout, || async {
        let (status, op) = server.get(&format!("/operations/{id}")).await;
        assert_eq!(status, 200, "{op}");
        (op["state"] != "running").then_some(op)
    })
    .await
}

/// Waits until step `step` of operation `id` is running.
pub async fn wait_step(server: &TestServer, id: &str, step: &str) {
    wait_for(
        &format!("step {step} of operation {id} to begin"),
        Duration::from_secs(120),
        || async {
            let (_, op) = server.get(&format!("/operations/{id}")).await;
            let steps = op["steps"].as_array().cloned().unwrap_or_default();
            steps
                .iter()
                .any(|s| s["name"] == step && s["outcome"] == "running")
                .then_some(())
        },
    )
    .await
}

/// Starts a cutover of `name` with `body` and waits for its outcome.
pub async fn cutover(server: &TestServer, name: &str, body: Value) -> Value {
    let (status, op) = server
        .post(&format!("/migrations/{name}/cutover"), body)
        .await;
    assert_eq!(status, 202, "cutover of {name}: {op}");
    assert_eq!(op["state"], "running", "{op}");
    wait_operation(server, op["id"].as_str().unwrap(), Duration::from_secs(120)).await
}

/// The names of the steps of an operation, in order.
pub fn step_names(op: &Value) -> Vec<String> {
    op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// An operation's step by name.
pub fn step<'a>(op: &'a Value, name: &str) -> &'a Value {
    op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {op}"))
}

/// The preflight gate `name` of a cutover operation.
pub fn gate(op: &Value, name: &str) -> Value {
    step(op, "preflight")["detail"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} gate in {op}"))
}

/// Whether a write to `item` succeeds; `Err` holds the error text.
pub async fn try_write(pool: &PgPool) -> Result<(), String> {
    sqlx::query("INSERT INTO item (writer, n, note) VALUES (-1, 0, 'probe')")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether pgshift's freeze function exists anywhere in the database.
pub async fn freeze_installed(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'cutover_freeze')")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Concurrent writers: each transaction inserts an item and a ledger row, updates a random
/// item and upserts a pair; they stop on request or when the source says it is frozen.
pub struct Writers {
    pub committed: Arc<AtomicU64>,
    /// Items inserted by committed transactions.
    pub items: Arc<Mutex<Vec<i64>>>,
    /// The first freeze error each writer saw.
    pub frozen: Arc<Mutex<Vec<String>>>,
    /// Any other error.
    pub errors: Arc<Mutex<Vec<String>>>,
    pub stop: Arc<AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    pub fn spawn(dsn: String, sessions: usize) -> Self {
        let w = Writers {
            committed: Arc::new(AtomicU64::new(0)),
            items: Arc::new(Mutex::new(Vec::new())),
            frozen: Arc::new(Mutex::new(Vec::new())),
            errors: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
        };
        let mut handles = Vec::new();
        for writer in 0..sessions {
            let (dsn, committed, items, frozen, errors, stop) = (
                dsn.clone(),
                w.committed.clone(),
                w.items.clone(),
                w.frozen.clone(),
                w.errors.clone(),
                w.stop.clone(),
            );
            handles.push(tokio::spawn(async move {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&dsn)
                    .await
                    .expect("writer connects");
                let mut rng = rand::rngs::StdRng::seed_from_u64(writer as u64);
                while !stop.load(Ordering::Relaxed) {
                    match write_once(&pool, writer as i32, &mut rng).await {
                        Ok(id) => {
                            items.lock().unwrap().push(id);
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.contains("is frozen") => {
                            frozen.lock().unwrap().push(e);
                            break;
                        }
                        Err(e) => errors.lock().unwrap().push(e),
                    }
                }
                pool.close().await;
            }));
        }
        Writers { handles, ..w }
    }

    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Waits for every writer to end (after a stop request or a freeze).
    pub async fn join(&mut self) {
        for h in self.handles.drain(..) {
            h.await.expect("writer task");
        }
    }
}

async fn write_once(
    pool: &PgPool,
    writer: i32,
    rng: &mut rand::rngs::StdRng,
) -> Result<i64, String> {
    let k: i32 = rng.gen_range(1..500);
    let pick: i64 = rng.gen_range(1..200);
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO item (writer, n, note, score) VALUES ($1, 1, md5(random()::text), random()) RETURNING id",
    )
    .bind(writer)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    sqlx::query("INSERT INTO ledger (item_id, amount) VALUES ($1, $2)")
        .bind(id)
        .bind(k)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("UPDATE item SET n = n + 1 WHERE id = $1")
        .bind(pick)
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO \"Odd Pair\" VALUES ($1, 'w' || $2, '{}') ON CONFLICT (k1, k2) DO UPDATE SET v = jsonb_build_object('n', $3::bigint)",
    )
    .bind(k)
    .bind(writer)
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(id)
}

/// Stalls the apply of `item` on the target with a lock held by the returned transaction.
pub async fn stall_apply(pair: &Pair) -> sqlx::Transaction<'static, sqlx::Postgres> {
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

/// `json!({})` with the lag threshold raised, for tests that must not trip the lag gate on a
/// busy machine.
pub fn relaxed(mut body: Value) -> Value {
    if body.get("max_lag_seconds").is_none() {
        body["max_lag_seconds"] = json!(60);
    }
    body
}
