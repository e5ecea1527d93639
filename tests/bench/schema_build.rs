//! `bench-schema-build`: the initial copy into tables whose secondary indexes and constraints are
//! built after the load (schema `create`: pgshift builds them once each table is copied) against
//! the same copy into tables that have them all from the start (schema `existing`, the target
//! made from the source's whole `pg_dump --schema-only`).
//!
//! ```sh
//! cargo run --release -p pgshift-tests --bin bench-schema-build -- [--rows 1000000] [--rounds 2]
//! ```
//!
//! Two throwaway PostgreSQL 15 servers; the source holds `customers` (`--rows` / 10 rows, a
//! unique email) and `orders` (`--rows` rows, four secondary indexes, a check constraint and a
//! foreign key). Each round migrates it twice into a fresh target database with the engine's
//! default settings (200,000-row chunks, two tables at once): once with schema `create`, once
//! into pre-built tables. It prints, per run, the seconds from start until every table is copied
//! and until the migration is synced with every object built. Progress goes to stderr, the
//! table to stdout.

use std::path::Path;
use std::time::{Duration, Instant};

use pgshift::engine::EngineSettings;
use pgshift_tests::server::TestServer;
use pgshift_tests::{wait_for, PgCluster, DEFAULT_PG_BIN};
use serde_json::{json, Value};

const SCHEMA: &str = r#"
CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text, created timestamptz NOT NULL);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers(id),
    status text NOT NULL CHECK (status IN ('new', 'paid', 'shipped')),
    amount numeric(12,2) NOT NULL,
    note text,
    created timestamptz NOT NULL
);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_created_idx ON orders (created);
CREATE INDEX orders_status_created_idx ON orders (status, created);
CREATE INDEX orders_note_idx ON orders (note);
"#;

struct Args {
    rows: i64,
    rounds: usize,
}

fn usage() -> ! {
    eprintln!("usage: bench-schema-build [--rows N] [--rounds N]");
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        rows: 1_000_000,
        rounds: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--rows" => a.rows = value.parse().unwrap_or_else(|_| usage()),
            "--rounds" => a.rounds = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    a
}

fn copied(m: &Value) -> bool {
    m["tables"].as_array().is_some_and(|t| {
        t.iter()
            .all(|t| t["state"] == "catching_up" || t["state"] == "synced")
    })
}

fn built(m: &Value) -> bool {
    m["state"] == "synced"
        && m["tables"].as_array().is_some_and(|t| {
            t.iter().all(|t| {
                t["objects_pending"]
                    .as_array()
                    .is_some_and(|a| a.is_empty())
                    && t["objects_failed"].as_array().is_some_and(|a| a.is_empty())
            })
        })
}

/// Runs one migration into database `db` of `target`; seconds until copied and until done.
async fn run(
    server: &TestServer,
    target: &PgCluster,
    db: &str,
    mode: &str,
    source: &PgCluster,
) -> (f64, f64) {
    target.create_database(db).await;
    if mode == "existing" {
        // The whole schema, indexes and constraints included, as `pg_dump -s | psql` makes it.
        let out = tokio::process::Command::new(Path::new(DEFAULT_PG_BIN).join("pg_dump"))
            .args(["--schema-only", "--no-owner"])
            .arg(format!("--dbname={}", source.dsn("app")))
            .output()
            .await
            .expect("pg_dump");
        assert!(out.status.success());
        let sql: String = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('\\'))
            .map(|l| format!("{l}\n"))
            .collect();
        target.psql(db, &sql).await;
    }
    let name = format!("{db}-{mode}");
    let (status, body) = server
        .post(
            "/migrations",
            json!({
                "name": name,
                "source": {"cluster": "source", "database": "app"},
                "target": {"cluster": "target", "database": db},
                "schema": mode,
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let started = Instant::now();
    let (status, body) = server
        .post(&format!("/migrations/{name}/start"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let limit = Duration::from_secs(3600);
    wait_for("the copy", limit, || async {
        copied(&server.migration(&name).await).then_some(())
    })
    .await;
    let copy = started.elapsed().as_secs_f64();
    wait_for("synced, every object built", limit, || async {
        built(&server.migration(&name).await).then_some(())
    })
    .await;
    let done = started.elapsed().as_secs_f64();
    let (status, body) = server.delete(&format!("/migrations/{name}")).await;
    assert_eq!(status, 204, "{body}");
    (copy, done)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let a = args();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    source.psql("app", SCHEMA).await;
    let customers = (a.rows / 10).max(1);
    eprintln!("loading {customers} customers and {} orders", a.rows);
    source
        .psql(
            "app",
            &format!(
                "INSERT INTO customers SELECT g, 'c' || g || '@example.com', md5(g::text), now() - g * interval '1 minute'
                   FROM generate_series(1, {customers}) g;
                 INSERT INTO orders SELECT g, 1 + g % {customers}, (ARRAY['new','paid','shipped'])[1 + g % 3],
                        (g % 10000) / 100.0, md5(g::text), now() - g * interval '1 second'
                   FROM generate_series(1, {}) g;
                 ANALYZE;",
                a.rows
            ),
        )
        .await;
    let server = TestServer::start_configured(|c| c.engine = EngineSettings::default()).await;
    server.add_cluster("source", &source.admin_dsn()).await;
    server.add_cluster("target", &target.admin_dsn()).await;
    println!("| round | target tables | copied (s) | synced, everything built (s) |");
    println!("|---|---|---|---|");
    for round in 1..=a.rounds {
        for mode in ["create", "existing"] {
            let db = format!("r{round}");
            eprintln!("round {round}: schema {mode}");
            let (copy, done) = run(&server, &target, &db, mode, &source).await;
            let what = if mode == "create" {
                "built by pgshift: indexes after the load"
            } else {
                "pre-built: indexes during the load"
            };
            println!("| {round} | {what} | {copy:.1} | {done:.1} |");
            target
                .psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"))
                .await;
        }
    }
}
