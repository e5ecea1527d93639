//! Schema "create" (issue 10, section 1): pgshift builds the target's tables from the source's
//! own schema into an empty database (the tables and keys before the copy, everything else after
//! it), shows what is left to build and what failed, and the cutover's gates wait for it. Schema
//! "existing" names every difference between the two sides. Each build test ends with an exact
//! comparison of every row and of both schemas (`pg_dump --schema-only`, normalized).

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgshift::auth::Role;
use pgshift_tests::dashboard::{create_user, UiClient};
use pgshift_tests::migrate::{assert_same_rows, wait_drained};
use pgshift_tests::server::{test_settings, TestServer};
use pgshift_tests::{init_tracing, pg18_bin, wait_for, PgCluster, PgPool, DEFAULT_PG_BIN};
use reqwest::StatusCode;
use serde_json::{json, Value};

const DRAIN: Duration = Duration::from_secs(180);

/// An application schema with what pgshift must build: an extension's type, schemas, an enum,
/// a table keyed by a unique constraint instead of a primary key,
/// a domain over a function, a composite type, sequences (owned and shared), a partitioned
/// table with partitions, check (also NOT VALID) and unique constraints, foreign keys (one
/// between partitioned tables), secondary indexes (one on a partitioned table), a trigger with
/// its function, a view over a view, a SQL function using a table, comments and grants, and
/// tables without a key (one partitioned), holding duplicate rows.
const SCHEMA: &str = r#"
CREATE EXTENSION citext;
CREATE ROLE reader;
CREATE SCHEMA shop;
CREATE TYPE shop.status AS ENUM ('new', 'paid', 'shipped');
CREATE FUNCTION shop.is_sku(text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$ SELECT $1 ~ '^[A-Z]{3}-[0-9]+$' $$;
CREATE DOMAIN shop.sku AS text CHECK (shop.is_sku(VALUE));
CREATE DOMAIN shop.positive AS integer CHECK (VALUE > 0);
CREATE TYPE shop.money_pair AS (amount numeric(12,2), currency char(3));
CREATE SEQUENCE shop.order_no_seq START 1000;
CREATE FUNCTION shop.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.updated_at := now(); RETURN NEW; END$$;
CREATE TABLE shop.customers (
    id bigserial PRIMARY KEY,
    email citext NOT NULL UNIQUE,
    name text CHECK (length(name) > 0),
    updated_at timestamptz
);
CREATE TABLE shop.products (sku shop.sku PRIMARY KEY, title text NOT NULL, price numeric(12,2) NOT NULL CHECK (price >= 0));
CREATE TABLE shop.orders (
    id bigint PRIMARY KEY DEFAULT nextval('shop.order_no_seq'),
    customer_id bigint NOT NULL REFERENCES shop.customers(id),
    sku shop.sku NOT NULL REFERENCES shop.products(sku) ON DELETE RESTRICT,
    status shop.status NOT NULL DEFAULT 'new',
    qty shop.positive,
    price shop.money_pair,
    tags text[],
    created date NOT NULL DEFAULT current_date,
    UNIQUE (customer_id, id)
);
ALTER TABLE shop.orders ADD CONSTRAINT qty_small CHECK (qty < 1000) NOT VALID;
CREATE INDEX orders_customer_idx ON shop.orders (customer_id, created DESC);
CREATE INDEX orders_tags_idx ON shop.orders USING gin (tags);
CREATE TRIGGER customers_touch BEFORE UPDATE ON shop.customers FOR EACH ROW EXECUTE FUNCTION shop.touch();
CREATE TABLE shop.events (id bigint NOT NULL, at date NOT NULL, kind text, customer_id bigint, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE shop.events_2026 PARTITION OF shop.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE shop.events_2027 PARTITION OF shop.events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
CREATE INDEX events_kind_idx ON shop.events (kind);
ALTER TABLE shop.events ADD CONSTRAINT events_customer_fkey FOREIGN KEY (customer_id) REFERENCES shop.customers(id);
CREATE VIEW shop.order_totals AS SELECT customer_id, count(*) AS n, sum((price).amount) AS total FROM shop.orders GROUP BY customer_id;
CREATE VIEW shop.big_customers AS SELECT customer_id FROM shop.order_totals WHERE n > 2;
CREATE FUNCTION shop.order_count(c bigint) RETURNS bigint LANGUAGE sql STABLE BEGIN ATOMIC SELECT count(*) FROM shop.orders WHERE customer_id = c; END;
COMMENT ON TABLE shop.orders IS 'orders, one per purchase';
COMMENT ON COLUMN shop.orders.qty IS 'how many';
GRANT USAGE ON SCHEMA shop TO reader;
GRANT SELECT ON shop.orders, shop.order_totals TO reader;
CREATE TABLE public.notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text);
CREATE TABLE shop.codes (code text NOT NULL, label text, UNIQUE (code) INCLUDE (label));
CREATE TABLE shop.audit_log (at date, who text, what jsonb, amount numeric);
CREATE INDEX audit_log_who_idx ON shop.audit_log (who);
CREATE TABLE shop.clicks (day date NOT NULL, page text, n int) PARTITION BY RANGE (day);
CREATE TABLE shop.clicks_2026 PARTITION OF shop.clicks FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE shop.clicks_rest PARTITION OF shop.clicks DEFAULT;
"#;

/// Rows for every table, before the migration starts.
const ROWS: &str = r#"
INSERT INTO shop.customers (email, name) SELECT 'c' || g || '@example.com', 'customer ' || g FROM generate_series(1, 300) g;
INSERT INTO shop.products SELECT 'SKU-' || g, 'product ' || g, g FROM generate_series(1, 50) g;
INSERT INTO shop.orders (customer_id, sku, status, qty, price, tags)
    SELECT 1 + g % 300, 'SKU-' || (1 + g % 50), (ARRAY['new','paid','shipped'])[1 + g % 3]::shop.status, 1 + g % 9,
           ROW(g * 1.5, 'EUR')::shop.money_pair, ARRAY['t' || g % 7]
      FROM generate_series(1, 3000) g;
INSERT INTO shop.events SELECT g, date '2026-01-01' + (g % 700), 'kind ' || g % 5, 1 + g % 300 FROM generate_series(1, 2000) g;
INSERT INTO public.notes (body) SELECT 'note ' || g FROM generate_series(1, 100) g;
INSERT INTO shop.codes SELECT 'C' || g, 'code ' || g FROM generate_series(1, 200) g;
INSERT INTO shop.audit_log SELECT date '2026-01-01' + g % 30, 'user ' || g % 7, jsonb_build_object('g', g % 3), 1.0 FROM generate_series(1, 400) g;
INSERT INTO shop.clicks SELECT date '2026-12-25' + g % 14, '/p' || g % 4, 1 FROM generate_series(1, 300) g;
"#;

/// Writes while the migration runs: through the copy, the catch-up and the objects' builds.
const WRITES: &str = r#"
UPDATE shop.customers SET name = name || '!' WHERE id % 10 = 0;
INSERT INTO shop.orders (customer_id, sku, qty) SELECT 1 + g % 300, 'SKU-1', 2 FROM generate_series(1, 50) g;
DELETE FROM shop.events WHERE id % 17 = 0;
UPDATE shop.codes SET label = NULL WHERE code LIKE 'C1%';
INSERT INTO shop.events VALUES (5000, '2027-06-01', 'late', 7);
UPDATE shop.audit_log SET amount = 1.00 WHERE ctid IN (SELECT ctid FROM shop.audit_log WHERE who = 'user 3' LIMIT 5);
DELETE FROM shop.audit_log WHERE ctid IN (SELECT ctid FROM shop.audit_log WHERE who = 'user 4' LIMIT 3);
INSERT INTO shop.audit_log SELECT at, who, what, amount FROM shop.audit_log WHERE who = 'user 5' LIMIT 10;
UPDATE shop.clicks SET day = day + 10, n = n + 1 WHERE page = '/p1';
"#;

/// The tables to compare, with their order.
const TABLES: &[(&str, &str)] = &[
    ("shop.customers", "id"),
    ("shop.products", "sku"),
    ("shop.orders", "id"),
    ("shop.events", "id, at"),
    ("public.notes", "id"),
    ("shop.codes", "code"),
    // Without a key: whole-row identity, duplicates included.
    ("shop.audit_log", "t::text COLLATE \"C\""),
    ("shop.clicks", "t::text COLLATE \"C\""),
];

/// `pg_dump --schema-only` of a database, normalized: comments, settings and psql's lines out,
/// pgshift's own objects (its schemas, its triggers on the source) out, and the entries sorted
/// (pg_dump breaks ties between independent objects by their oids, which differ between the
/// sides).
/// With `view_names_only`, a view's entry keeps its first line: servers of different versions
/// print the same definition differently (PostgreSQL 16 dropped redundant qualifications), so
/// across versions the views' rows are compared instead.
async fn schema_of(bin: &Path, cluster: &PgCluster, db: &str, view_names_only: bool) -> String {
    let out = tokio::process::Command::new(bin.join("pg_dump"))
        .args(["--schema-only", "--no-owner", "--exclude-schema=pgshift_*"])
        .arg(format!("--dbname={}", cluster.dsn(db)))
        .env_remove("PGPASSWORD")
        .output()
        .await
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut entries: Vec<String> = text
        .split("\n\n")
        .map(|entry| {
            let keep = if view_names_only && entry.contains("CREATE VIEW ") {
                entry
                    .lines()
                    .take_while(|l| !l.starts_with("CREATE VIEW "))
                    .count()
                    + 1
            } else {
                usize::MAX
            };
            entry
                .lines()
                .take(keep)
                .filter(|l| {
                    !l.starts_with("--")
                        && !l.starts_with("\\restrict")
                        && !l.starts_with("\\unrestrict")
                        && !l.starts_with("SET ")
                        && !l.starts_with("SELECT pg_catalog.set_config")
                        && !l.contains("pgshift_")
                        // This machine's PostgreSQL 15 build keeps a `pg_attver` option on
                        // every column, which pg_dump 18 writes out for some: not the schema's.
                        && !l.contains("pg_attver=")
                        && !l.trim().is_empty()
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|e| !e.is_empty())
        .collect();
    entries.sort();
    entries.join("\n")
}

/// Asserts both databases have the same schema, naming the first differing line.
async fn assert_same_schema(bin: &Path, source: &PgCluster, target: &PgCluster, views: bool) {
    let a = schema_of(bin, source, "app", views).await;
    let b = schema_of(bin, target, "app", views).await;
    if a != b {
        let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
        let at = la
            .iter()
            .zip(&lb)
            .position(|(x, y)| x != y)
            .unwrap_or(la.len().min(lb.len()));
        panic!(
            "the schemas differ at line {at}:\n  source: {:?}\n  target: {:?}\n--- source ---\n{a}\n--- target ---\n{b}",
            la.get(at),
            lb.get(at)
        );
    }
}

fn tables(m: &Value) -> &Vec<Value> {
    m["tables"].as_array().expect("tables")
}

/// Every object built, none failed, on every table.
fn all_built(m: &Value) -> bool {
    tables(m).iter().all(|t| {
        t["objects_pending"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            && t["objects_failed"].as_array().is_some_and(|a| a.is_empty())
    })
}

async fn server_with_pg_bin(bin: Option<PathBuf>) -> TestServer {
    TestServer::start_configured(|c| {
        c.engine = test_settings();
        c.engine.pg_bin_dir = bin;
    })
    .await
}

async fn register(server: &TestServer, source: &PgCluster, target: &PgCluster) {
    server.add_cluster("source", &source.admin_dsn()).await;
    server.add_cluster("target", &target.admin_dsn()).await;
}

async fn create(server: &TestServer, name: &str, extra: Value) -> (StatusCode, Value) {
    let mut body = json!({
        "name": name,
        "source": {"cluster": "source", "database": "app"},
        "target": {"cluster": "target", "database": "app"},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    server.post("/migrations", body).await
}

/// Moves the schema and rows into an empty database and compares both.
async fn migrate_into_empty(source: PgCluster, target: PgCluster, dump_bin: &Path, across: bool) {
    source.create_database("app").await;
    target.create_database("app").await;
    // The role the grants name exists on both servers (roles are the cluster's, not the dump's).
    target.psql("postgres", "CREATE ROLE reader").await;
    source.psql("app", SCHEMA).await;
    source.psql("app", ROWS).await;
    let src = source.connect("app").await;
    let dst: PgPool = target.connect("app").await;

    let server = server_with_pg_bin(None).await;
    register(&server, &source, &target).await;
    // No "schema": none of the tables exists on the target, so pgshift creates them.
    let (status, body) = create(&server, "build", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["schema"], "create", "{body}");
    let (status, body) = server.post("/migrations/build/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    source.psql("app", WRITES).await;

    wait_drained(&server, "build", &src, DRAIN).await;
    let m = wait_for("every object built", DRAIN, || async {
        let m = server.migration("build").await;
        for t in tables(&m) {
            let failed = t["objects_failed"].as_array().unwrap();
            assert!(failed.is_empty(), "an object failed: {m}");
        }
        all_built(&m).then_some(m)
    })
    .await;
    assert_eq!(m["state"], "synced", "{m}");
    for (table, order) in TABLES {
        assert_same_rows(&src, &dst, table, order).await;
    }
    assert_same_schema(dump_bin, &source, &target, across).await;
    for view in ["shop.order_totals", "shop.big_customers"] {
        assert_same_rows(&src, &dst, view, "customer_id").await;
    }
    let count = "SELECT shop.order_count(7)";
    let (a, b): (i64, i64) = (
        sqlx::query_scalar(count).fetch_one(&src).await.unwrap(),
        sqlx::query_scalar(count).fetch_one(&dst).await.unwrap(),
    );
    assert_eq!(a, b, "shop.order_count(7)");

    // The target's own trigger does not fire on replicated rows, but it is there for the
    // application after the cutover; the foreign keys are validated.
    let unvalidated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated AND connamespace = 'shop'::regnamespace",
    )
    .fetch_one(&dst)
    .await
    .unwrap();
    assert_eq!(unvalidated, 0);
    // Writes after the build still arrive, through the new indexes and constraints.
    source
        .psql("app", "UPDATE shop.orders SET qty = 5 WHERE id % 7 = 0; INSERT INTO shop.customers (email) VALUES ('late@example.com');")
        .await;
    wait_drained(&server, "build", &src, DRAIN).await;
    for (table, order) in TABLES {
        assert_same_rows(&src, &dst, table, order).await;
    }
    // The secondary indexes, constraints and triggers were built after their table's copy, the
    // foreign keys validated once both ends were synced (pgshift's bookkeeping on the target
    // records when each object was built).
    let bookkeeping: String = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'pgshift\\_%'",
    )
    .fetch_one(&dst)
    .await
    .unwrap();
    let (after, early): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*) FILTER (WHERE o.built_at >= t.copy_finished_at),
                count(*) FILTER (WHERE o.built_at < t.copy_finished_at)
           FROM {b}.schema_object o JOIN {b}.table_state t ON t.table_no = ANY (o.tables)
          WHERE o.kind IN ('INDEX', 'CONSTRAINT', 'TRIGGER', 'FK CONSTRAINT', 'VALIDATE')",
        b = bookkeeping
    ))
    .fetch_one(&dst)
    .await
    .unwrap();
    assert!(after >= 8, "{after} objects built after the copy");
    assert_eq!(early, 0, "objects built before their table's copy ended");

    // The cutover's gates pass (target_schema among them), and the application can write on
    // the target: sequences moved, triggers and constraints in place.
    let gate = dry_run_gate(&server, "build", "target_schema").await;
    assert_eq!(gate["passed"], true, "{gate}");
    let (status, op) = server
        .post("/migrations/build/cutover", json!({"max_lag_seconds": 60}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let op = wait_for("the cutover", DRAIN, || async {
        let (_, op) = server.get(&format!("/operations/{id}")).await;
        (op["state"] != "running").then_some(op)
    })
    .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let (order, touched): (i64, bool) = sqlx::query_as(
        "WITH o AS (INSERT INTO shop.orders (customer_id, sku, qty) VALUES (1, 'SKU-2', 3) RETURNING id),
              c AS (UPDATE shop.customers SET name = 'moved' WHERE id = 1 RETURNING updated_at IS NOT NULL AS touched)
         SELECT (SELECT id FROM o), (SELECT touched FROM c)",
    )
    .fetch_one(&dst)
    .await
    .unwrap();
    let highest: i64 = sqlx::query_scalar("SELECT max(id) FROM shop.orders WHERE id <> $1")
        .bind(order)
        .fetch_one(&src)
        .await
        .unwrap();
    assert!(
        order > highest,
        "the order sequence moved forward: {order} after {highest}"
    );
    assert!(touched, "the trigger fires on the target after the cutover");
    let refused =
        sqlx::query("INSERT INTO shop.orders (customer_id, sku) VALUES (999999, 'SKU-2')")
            .execute(&dst)
            .await;
    assert!(refused.is_err(), "the foreign key holds on the target");
}

/// Everything the tables need, built into an empty database of the same version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_builds_the_schema_into_an_empty_database() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    migrate_into_empty(source, target, Path::new(DEFAULT_PG_BIN), false).await;
}

/// The same move from PostgreSQL 15 to 18 (when the harness has 18's binaries).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_moves_from_15_to_18() {
    init_tracing();
    let Some(bin18) = pg18_bin() else {
        eprintln!("PostgreSQL 18 is not installed (tests/setup.sh installs it): skipped");
        return;
    };
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start_pg18());
    let target = target.expect("PostgreSQL 18");
    // One pg_dump (18's, which reads both) for both sides, so that its own words compare.
    migrate_into_empty(source, target, &bin18, true).await;
}

/// `pgshift migration show NAME` against the server, in-process: its standard output.
async fn show(server: &TestServer, name: &str) -> String {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = [
        "pgshift",
        "migration",
        "show",
        name,
        "--url",
        &server.base,
        "--token",
        &server.token,
    ];
    let exit = pgshift::client::run_async(args.iter().copied(), &mut out, &mut err).await;
    assert_eq!(
        exit,
        pgshift::client::Exit::Ok,
        "{}",
        String::from_utf8_lossy(&err)
    );
    String::from_utf8(out).unwrap()
}

/// The preflight gate `name` of a dry-run cutover.
async fn dry_run_gate(server: &TestServer, migration: &str, name: &str) -> Value {
    let (status, op) = server
        .post(
            &format!("/migrations/{migration}/cutover"),
            json!({"dry_run": true, "max_lag_seconds": 60}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let op = wait_for("the dry run", Duration::from_secs(60), || async {
        let (_, op) = server.get(&format!("/operations/{id}")).await;
        (op["state"] != "running").then_some(op)
    })
    .await;
    op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "preflight")
        .and_then(|s| s["detail"]["gates"].as_array())
        .and_then(|g| g.iter().find(|g| g["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no {name} gate in {op}"))
}

/// An object that cannot be built (a grant to a role the target lacks) is shown with its
/// statement and error in the API and `migration show`, holds the cutover's gates, and is built
/// once the cause is fixed and the migration resumed. Tables left out of the migration stay out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_object_is_shown_and_holds_the_cutover() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    source
        .psql(
            "app",
            "CREATE ROLE auditor;
             CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL CHECK (v <> ''));
             CREATE INDEX items_v_idx ON items (v);
             GRANT SELECT ON items TO auditor;
             CREATE TABLE other (id int PRIMARY KEY, w text);
             CREATE INDEX other_w_idx ON other (w);
             CREATE TABLE left_out (id int PRIMARY KEY);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g;",
        )
        .await;
    let src = source.connect("app").await;
    let dst = target.connect("app").await;
    let server = server_with_pg_bin(None).await;
    register(&server, &source, &target).await;
    let (status, body) = create(
        &server,
        "grants",
        json!({"schema": "create", "tables": ["public.items", "public.other"]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.post("/migrations/grants/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let m = wait_for("the grant to fail", DRAIN, || async {
        let m = server.migration("grants").await;
        let failed = tables(&m)[0]["objects_failed"].as_array().unwrap().clone();
        (m["state"] == "synced" && !failed.is_empty()).then_some(m)
    })
    .await;
    let t = &tables(&m)[0];
    assert_eq!(t["name"], "public.items");
    // The grant is on items: shown there only.
    let other = &tables(&m)[1];
    assert_eq!(other["name"], "public.other");
    assert_eq!(other["objects_failed"], json!([]), "{m}");
    let failed = &t["objects_failed"][0];
    assert_eq!(failed["object"], "ACL ON TABLE public.items", "{m}");
    assert_eq!(
        failed["statement"], "GRANT SELECT ON TABLE public.items TO auditor;",
        "{m}"
    );
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("role \"auditor\" does not exist"),
        "{m}"
    );
    // The index was built all the same.
    let index: bool = sqlx::query_scalar("SELECT to_regclass('public.items_v_idx') IS NOT NULL")
        .fetch_one(&dst)
        .await
        .unwrap();
    assert!(index);
    let left_out: bool = sqlx::query_scalar("SELECT to_regclass('public.left_out') IS NULL")
        .fetch_one(&dst)
        .await
        .unwrap();
    assert!(left_out, "a table outside the migration was built");

    let shown = show(&server, "grants").await;
    assert!(
        shown.contains("schema:") && shown.contains("create"),
        "{shown}"
    );
    assert!(shown.contains("1 failed"), "{shown}");
    assert!(
        shown.contains("objects that could not be built")
            && shown.contains("GRANT SELECT ON TABLE public.items TO auditor;")
            && shown.contains("role \"auditor\" does not exist"),
        "{shown}"
    );

    // The dashboard's table row says the same.
    create_user(&server.data_dir, "vera", Role::Viewer, "viewer password 1").await;
    let mut ui = UiClient::new(&server.base);
    ui.sign_in("vera", "viewer password 1").await;
    let page = ui.get("/ui/migrations/grants/live").await;
    assert!(
        page.body
            .contains("Could not build ACL ON TABLE public.items")
            && page
                .body
                .contains("GRANT SELECT ON TABLE public.items TO auditor;"),
        "{}",
        page.body
    );

    let gate = dry_run_gate(&server, "grants", "target_schema").await;
    assert_eq!(gate["passed"], false, "{gate}");
    assert!(
        gate["reason"]
            .as_str()
            .unwrap()
            .contains("ACL ON TABLE public.items"),
        "{gate}"
    );

    // Fixed on the target; resuming tries again.
    target.psql("postgres", "CREATE ROLE auditor").await;
    let (status, body) = server.post("/migrations/grants/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server.post("/migrations/grants/resume", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for("the grant to be built", DRAIN, || async {
        all_built(&server.migration("grants").await).then_some(())
    })
    .await;
    wait_drained(&server, "grants", &src, DRAIN).await;
    assert_same_rows(&src, &dst, "public.items", "id").await;
    let gate = dry_run_gate(&server, "grants", "target_schema").await;
    assert_eq!(gate["passed"], true, "{gate}");
}

/// Schema "existing": each difference is named exactly (column, type, nullability, key) in the
/// refusal, in the preview's words (through the same comparison) and in `migration show`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn existing_names_every_difference() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    source
        .psql(
            "app",
            "CREATE TABLE t (id int PRIMARY KEY, qty int, note text NOT NULL, code text);
             CREATE TABLE k (a int, b int, PRIMARY KEY (a, b));",
        )
        .await;
    target
        .psql(
            "app",
            "CREATE TABLE t (id int PRIMARY KEY, qty bigint, note text, code text NOT NULL, extra int);
             CREATE TABLE k (a int, b int, PRIMARY KEY (a));",
        )
        .await;
    let server = server_with_pg_bin(None).await;
    register(&server, &source, &target).await;
    // The tables exist on the target: "existing" is the default.
    let (status, body) = create(&server, "diff", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    // The code names the first difference (public.k sorts first); the message every one.
    assert_eq!(body["error"]["code"], "target_key_differs", "{body}");
    for words in [
        "public.t: column qty is integer on the source but bigint on the target",
        "public.t: column code is NULL on the source but NOT NULL on the target (rows with NULL would be refused there)",
        "public.t: column extra (integer) exists on the target only",
        "public.k: the key is (a, b) on the source but (a) on the target",
    ] {
        assert!(message.contains(words), "missing {words:?} in {message}");
    }
    // NOT NULL on the source only loses nothing: not a reason to refuse.
    assert!(!message.contains("column note"), "{message}");
    // The new-migration form's preview names them too.
    create_user(&server.data_dir, "adam", Role::Admin, "admin password 1").await;
    let mut ui = UiClient::new(&server.base);
    ui.sign_in("adam", "admin password 1").await;
    let preview = ui
        .get("/ui/migrations/preview?source_cluster=source&source_database=app&target_cluster=target&target_database=app")
        .await;
    assert!(
        preview.body.contains("existing</strong> tables")
            && preview
                .body
                .contains("public.t: column qty is integer on the source but bigint on the target")
            && preview
                .body
                .contains("public.t: column note is NOT NULL on the source but NULL on the target"),
        "{}",
        preview.body
    );

    // Fixed but for the harmless one: created; `show` still names it.
    target
        .psql(
            "app",
            "ALTER TABLE t ALTER qty TYPE int, ALTER code DROP NOT NULL, DROP COLUMN extra;
             ALTER TABLE k DROP CONSTRAINT k_pkey, ADD PRIMARY KEY (a, b);",
        )
        .await;
    let (status, body) = create(&server, "diff", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["schema"], "existing", "{body}");
    let m = server.migration("diff").await;
    let differences = m["differences"].as_array().expect("differences");
    assert_eq!(differences.len(), 1, "{m}");
    assert_eq!(differences[0]["column"], "note");
    assert_eq!(differences[0]["kind"], "nullability");
    assert_eq!(differences[0]["source"], "NOT NULL");
    assert_eq!(differences[0]["target"], "NULL");
    assert_eq!(differences[0]["refused"], false);
    // A change on the target after creation shows in `migration show`.
    target
        .psql("app", "ALTER TABLE t ALTER qty TYPE numeric")
        .await;
    let shown = show(&server, "diff").await;
    assert!(
        shown.contains("public.t: column qty is integer on the source but numeric on the target (pgshift refuses this)")
            && shown.contains("public.t: column note is NOT NULL on the source but NULL on the target"),
        "{shown}"
    );
}

/// The checks schema "create" makes at creation: the target already has a table; a source newer
/// than the newest pg_dump found (an 18 source with 15's client) is refused, and accepted with
/// pg_bin_dir pointing at 18's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_is_refused_with_the_reason() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    source
        .psql(
            "app",
            "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);",
        )
        .await;
    target
        .psql("app", "CREATE TABLE b (id int PRIMARY KEY);")
        .await;
    let server = server_with_pg_bin(None).await;
    register(&server, &source, &target).await;
    let (status, body) = create(&server, "m", json!({"schema": "create"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "target_table_exists", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("public.b"),
        "{body}"
    );

    let Some(bin18) = pg18_bin() else {
        eprintln!("PostgreSQL 18 is not installed (tests/setup.sh installs it): the version check is not tested");
        return;
    };
    let source18 = PgCluster::start_pg18().await.expect("PostgreSQL 18");
    source18.create_database("app").await;
    source18
        .psql("app", "CREATE TABLE a (id int PRIMARY KEY);")
        .await;
    server
        .add_cluster("new-source", &source18.admin_dsn())
        .await;
    let body = json!({
        "name": "up",
        "source": {"cluster": "new-source", "database": "app"},
        "target": {"cluster": "target", "database": "app"},
        "tables": ["public.a"],
    });
    let (status, answer) = server.post("/migrations", body.clone()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "pg_dump_too_old", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the source runs PostgreSQL 18 but the newest pg_dump found is 15"),
        "{answer}"
    );
    let server18 = server_with_pg_bin(Some(bin18)).await;
    server18
        .add_cluster("new-source", &source18.admin_dsn())
        .await;
    server18.add_cluster("target", &target.admin_dsn()).await;
    let (status, answer) = server18.post("/migrations", body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["schema"], "create", "{answer}");
}

/// A target role that is no superuser: an extension the tables need that it cannot create
/// (`bloom`, untrusted) refuses the migration with the reason; a trusted one (`citext`) it
/// creates itself, with the tables it then owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extensions_the_target_role_cannot_create_are_refused() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    target
        .psql(
            "app",
            "CREATE ROLE migrator LOGIN;
             GRANT CREATE, TEMP ON DATABASE app TO migrator;
             GRANT SET ON PARAMETER session_replication_role TO migrator;",
        )
        .await;
    source
        .psql(
            "app",
            "CREATE EXTENSION citext; CREATE EXTENSION bloom;
             CREATE TABLE people (id int PRIMARY KEY, email citext NOT NULL, a int, b int);
             CREATE INDEX people_ab_bloom ON people USING bloom (a, b);
             INSERT INTO people SELECT g, 'P' || g || '@Example.com', g % 7, g % 11 FROM generate_series(1, 300) g;",
        )
        .await;
    let server = server_with_pg_bin(None).await;
    server.add_cluster("source", &source.admin_dsn()).await;
    server
        .add_cluster(
            "target",
            &format!("postgresql://migrator@127.0.0.1:{}/postgres", target.port()),
        )
        .await;
    // PostgreSQL 15's public schema takes no tables from other roles by default.
    let (status, body) = create(&server, "ext", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "missing_privilege", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CREATE on schema \"public\", where the tables go (GRANT CREATE ON SCHEMA \"public\" TO \"migrator\")"),
        "{body}"
    );
    target
        .psql("app", "GRANT CREATE ON SCHEMA public TO migrator")
        .await;
    let (status, body) = create(&server, "ext", json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "extension_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("extension bloom is not trusted")
            && message.contains("CREATE EXTENSION \"bloom\" in the target database as a superuser")
            && !message.contains("citext"),
        "{message}"
    );

    source
        .psql("app", "DROP INDEX people_ab_bloom; DROP EXTENSION bloom;")
        .await;
    let (status, body) = create(&server, "ext", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.post("/migrations/ext/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let src = source.connect("app").await;
    wait_drained(&server, "ext", &src, DRAIN).await;
    let dst = target.connect("app").await;
    assert_same_rows(&src, &dst, "public.people", "id").await;
    let (owner, case_blind): (String, bool) = sqlx::query_as(
        "SELECT pg_get_userbyid(relowner)::text, (SELECT email = 'p1@example.com' FROM people WHERE id = 1)
           FROM pg_class WHERE oid = 'public.people'::regclass",
    )
    .fetch_one(&dst)
    .await
    .unwrap();
    assert_eq!(owner, "migrator");
    assert!(case_blind, "citext compares without case on the target");
}

/// Attempts of migration `name` that failed since the server started it (`/metrics`).
async fn failed_attempts(server: &TestServer, name: &str) -> i64 {
    let body = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("pgshift_migration_failed_attempts{{migration=\"{name}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {body}"))
        .trim()
        .parse()
        .unwrap()
}

/// A table that a foreign key built after the copy references is emptied on the source: the
/// worker applies the TRUNCATE as a DELETE (a TRUNCATE of a referenced table is refused), with
/// no failed attempt, although the key did not exist yet when its run started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncate_after_the_foreign_keys_are_built_applies_at_once() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    source
        .psql(
            "app",
            "CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent(id));
             INSERT INTO parent SELECT generate_series(1, 100);
             INSERT INTO child SELECT g, g FROM generate_series(1, 100) g;",
        )
        .await;
    let src = source.connect("app").await;
    let dst = target.connect("app").await;
    let server = server_with_pg_bin(None).await;
    register(&server, &source, &target).await;
    let (status, body) = create(&server, "fk", json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.post("/migrations/fk/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for("the foreign key to be validated", DRAIN, || async {
        all_built(&server.migration("fk").await).then_some(())
    })
    .await;
    source
        .psql(
            "app",
            "TRUNCATE child, parent; INSERT INTO parent VALUES (7); INSERT INTO child VALUES (1, 7);",
        )
        .await;
    wait_drained(&server, "fk", &src, DRAIN).await;
    assert_same_rows(&src, &dst, "public.parent", "id").await;
    assert_same_rows(&src, &dst, "public.child", "id").await;
    assert_eq!(failed_attempts(&server, "fk").await, 0);
}
