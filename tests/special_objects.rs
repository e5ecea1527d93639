//! What pgshift does not move as rows of its tables, said up front (issue 10, section 5): large
//! objects, materialized views, unlogged tables, foreign tables and partitions left
//! half-detached are named in the preview (API, CLI, dashboard), at creation and in
//! `migration show`, each with what happens to it, and each test checks that it happens: an
//! unlogged table's rows arrive, a materialized view is built, refreshed from the target's rows
//! and indexed, one the migration does not need is not built, the large objects' command copies
//! them, a half-detached partition's rows stay behind until the detach is finished.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pgshift::auth::Role;
use pgshift_tests::dashboard::{create_user, UiClient};
use pgshift_tests::migrate::{assert_same_rows, wait_drained};
use pgshift_tests::server::{test_settings, TestServer};
use pgshift_tests::{init_tracing, wait_for, PgCluster, PgPool, DEFAULT_PG_BIN};
use reqwest::StatusCode;
use serde_json::{json, Value};

const DRAIN: Duration = Duration::from_secs(180);

/// Every kind of special object. `ledger` is what the materialized view `totals` reads; it is
/// written after `totals` was refreshed on the source, whose rows are then stale. `readings`
/// (no key, so refused today whatever else) has a foreign partition.
const SCHEMA: &str = r#"
CREATE EXTENSION postgres_fdw;
CREATE SERVER elsewhere FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', dbname 'nowhere');
CREATE FOREIGN TABLE public.remote_rates (code text, rate numeric) SERVER elsewhere;
CREATE TABLE public.orders (id int PRIMARY KEY, customer int NOT NULL, amount numeric NOT NULL, doc oid);
CREATE TABLE public.ledger (id int PRIMARY KEY, customer int NOT NULL, amount numeric NOT NULL);
CREATE UNLOGGED TABLE public.sessions (id int PRIMARY KEY, token text NOT NULL);
CREATE UNLOGGED TABLE public.scratch (id int PRIMARY KEY);
CREATE TABLE public.readings (at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE public.readings_new PARTITION OF public.readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE FOREIGN TABLE public.readings_old PARTITION OF public.readings
    FOR VALUES FROM ('2000-01-01') TO ('2026-01-01') SERVER elsewhere;
INSERT INTO public.orders
    SELECT g, g % 7, g * 1.25, CASE WHEN g <= 5 THEN lo_from_bytea(0, convert_to('document ' || g, 'UTF8')) END
      FROM generate_series(1, 300) g;
INSERT INTO public.ledger SELECT g, g % 11, g * 2.5 FROM generate_series(1, 400) g;
INSERT INTO public.sessions SELECT g, md5(g::text) FROM generate_series(1, 200) g;
CREATE MATERIALIZED VIEW public.totals AS
    SELECT customer, sum(amount) AS total, count(*) AS n FROM public.ledger GROUP BY customer;
CREATE UNIQUE INDEX totals_customer ON public.totals (customer);
CREATE MATERIALIZED VIEW public.later AS SELECT id FROM public.orders WITH NO DATA;
CREATE MATERIALIZED VIEW public.scratch_count AS SELECT count(*) AS n FROM public.scratch;
UPDATE public.ledger SET amount = amount + 100 WHERE id % 4 = 0;
INSERT INTO public.ledger SELECT g, 20 + g % 3, g FROM generate_series(401, 450) g;
"#;

async fn server() -> TestServer {
    TestServer::start_configured(|c| {
        c.engine = test_settings();
    })
    .await
}

async fn register(server: &TestServer, source: &PgCluster, target: &PgCluster) {
    server.add_cluster("source", &source.admin_dsn()).await;
    server.add_cluster("target", &target.admin_dsn()).await;
}

fn endpoints() -> Value {
    json!({
        "source": {"cluster": "source", "database": "app"},
        "target": {"cluster": "target", "database": "app"},
    })
}

/// The special objects of a preview or a migration, by (kind, name).
fn by_name(v: &Value) -> BTreeMap<(String, String), Value> {
    v["special_objects"]
        .as_array()
        .unwrap_or_else(|| panic!("no special_objects in {v}"))
        .iter()
        .map(|o| {
            (
                (
                    o["kind"].as_str().unwrap().to_string(),
                    o["name"].as_str().unwrap().to_string(),
                ),
                o.clone(),
            )
        })
        .collect()
}

/// The entry for (kind, name), asserting how it is handled and that its words hold `words`.
fn expect(
    objects: &BTreeMap<(String, String), Value>,
    kind: &str,
    name: &str,
    handling: &str,
    words: &str,
) -> Value {
    let o = objects
        .get(&(kind.to_string(), name.to_string()))
        .unwrap_or_else(|| panic!("{kind} {name} is not named in {objects:#?}"))
        .clone();
    assert_eq!(o["handling"], handling, "{o}");
    assert!(
        o["words"].as_str().unwrap().contains(words),
        "{words:?} not in {o}"
    );
    o
}

/// `pgshift migration …` against the server, in-process: its standard output.
async fn cli(server: &TestServer, args: &[&str]) -> String {
    let mut all = vec!["pgshift", "migration"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--url", &server.base, "--token", &server.token]);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = pgshift::client::run_async(all.iter().copied(), &mut out, &mut err).await;
    assert_eq!(
        exit,
        pgshift::client::Exit::Ok,
        "{}",
        String::from_utf8_lossy(&err)
    );
    String::from_utf8(out).unwrap()
}

/// Every large object of a database: its oid and contents.
async fn large_objects(pool: &PgPool) -> Vec<(i64, Vec<u8>)> {
    sqlx::query_as("SELECT oid::int8, lo_get(oid) FROM pg_largeobject_metadata ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Schema "create": the preview names every special object with what happens to it, in the
/// API, the CLI and the dashboard; creation and `migration show` say the same; and it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_special_object_is_named_and_handled_as_said() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    source.psql("app", SCHEMA).await;
    let src = source.connect("app").await;
    let dst = target.connect("app").await;
    let server = server().await;
    register(&server, &source, &target).await;

    // The API's preview, with the partitioned table whose partition is a foreign table.
    let mut body = endpoints();
    body["tables"] = json!([
        "public.orders",
        "public.ledger",
        "public.sessions",
        "public.readings"
    ]);
    let (status, preview) = server.post("/migrations/preview", body).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["schema"], "create", "{preview}");
    let readings = preview["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "public.readings")
        .unwrap();
    assert!(
        readings["problem"]
            .as_str()
            .unwrap()
            .contains("public.readings_old, a partition of public.readings, is a foreign table"),
        "{readings}"
    );
    let objects = by_name(&preview);
    let lo = expect(
        &objects,
        "large_objects",
        "5 large objects",
        "left_out",
        "pgshift does not move large objects",
    );
    let command = lo["command"].as_str().unwrap();
    assert!(
        command.starts_with("pg_dump --format=custom --data-only -b --exclude-table-data='*.*'")
            && command.contains(&format!("127.0.0.1:{}/app", source.port()))
            && command.contains(&format!("127.0.0.1:{}/app", target.port())),
        "{command}"
    );
    expect(
        &objects,
        "materialized_view",
        "public.totals",
        "refreshed",
        "then refreshed there once it is synced",
    );
    let later = expect(
        &objects,
        "materialized_view",
        "public.later",
        "built_empty",
        "WITH NO DATA",
    );
    assert_eq!(later["command"], "REFRESH MATERIALIZED VIEW public.later;");
    expect(
        &objects,
        "materialized_view",
        "public.scratch_count",
        "left_out",
        "reads only tables the migration leaves out (public.scratch)",
    );
    expect(
        &objects,
        "unlogged_table",
        "public.sessions",
        "moved",
        "built UNLOGGED on the target too",
    );
    expect(
        &objects,
        "unlogged_table",
        "public.scratch",
        "left_out",
        "not selected by the table patterns",
    );
    expect(
        &objects,
        "foreign_table",
        "public.remote_rates",
        "left_out",
        "foreign server elsewhere (foreign-data wrapper postgres_fdw)",
    );
    expect(
        &objects,
        "foreign_table",
        "public.readings_old",
        "refused",
        "a foreign table takes no TRUNCATE trigger",
    );
    assert_eq!(objects.len(), 8, "{objects:#?}");

    // The migration leaves readings out: its foreign partition is left out with it.
    let tables = [
        "--table",
        "public.orders",
        "--table",
        "public.ledger",
        "--table",
        "public.sessions",
    ];
    let mut args = vec![
        "preview",
        "--source",
        "source:app",
        "--target",
        "target:app",
    ];
    args.extend_from_slice(&tables);
    let shown = cli(&server, &args).await;
    for line in [
        "3 tables match",
        "all can be migrated",
        "materialized view public.totals: refreshed on the target",
        "materialized view public.later: built empty",
        "unlogged table public.sessions: moved",
        "foreign table public.readings_old: left out",
        "5 large objects: left out",
        "run: pg_dump --format=custom",
        "run: REFRESH MATERIALIZED VIEW public.later;",
    ] {
        assert!(shown.contains(line), "{line:?} not in:\n{shown}");
    }

    // The dashboard's preview lists them too.
    create_user(&server.data_dir, "adam", Role::Admin, "admin password 1").await;
    let mut ui = UiClient::new(&server.base);
    ui.sign_in("adam", "admin password 1").await;
    let page = ui
        .get("/ui/migrations/preview?source_cluster=source&source_database=app&target_cluster=target&target_database=app&tables=public.orders%0Apublic.ledger%0Apublic.sessions")
        .await;
    for fragment in [
        "id=\"special-objects\"",
        "data-kind=\"large_objects\" data-handling=\"left_out\"",
        "data-kind=\"materialized_view\" data-handling=\"refreshed\"",
        "<span class=\"mono\">public.totals</span>",
        "data-kind=\"unlogged_table\" data-handling=\"moved\"",
        "<span class=\"mono\">public.remote_rates</span>",
        "pg_dump --format=custom --data-only -b",
    ] {
        assert!(
            page.body.contains(fragment),
            "{fragment:?} not in:\n{}",
            page.body
        );
    }

    // Creation says the same, and the migration runs while the source is written.
    let mut body = endpoints();
    body["name"] = json!("special");
    body["tables"] = json!(["public.orders", "public.ledger", "public.sessions"]);
    let (status, created) = server.post("/migrations", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let old = (
        "foreign_table".to_string(),
        "public.readings_old".to_string(),
    );
    let (mut said, mut previewed) = (by_name(&created), by_name(&preview));
    let left = said.remove(&old).unwrap();
    assert_eq!(left["handling"], "left_out", "{left}");
    previewed.remove(&old);
    assert_eq!(said, previewed);
    let (status, body) = server.post("/migrations/special/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    source
        .psql(
            "app",
            "UPDATE public.orders SET amount = amount + 1 WHERE id % 3 = 0;
             INSERT INTO public.orders SELECT g, g % 7, g FROM generate_series(301, 350) g;
             DELETE FROM public.sessions WHERE id % 10 = 0;
             UPDATE public.sessions SET token = 'renewed' WHERE id % 7 = 0;
             INSERT INTO public.sessions VALUES (1000, 'late');",
        )
        .await;
    wait_drained(&server, "special", &src, DRAIN).await;
    let m = wait_for(
        "every object built, the refresh among them",
        DRAIN,
        || async {
            let m = server.migration("special").await;
            let tables = m["tables"].as_array().unwrap();
            for t in tables {
                assert_eq!(t["objects_failed"], json!([]), "an object failed: {m}");
            }
            tables
                .iter()
                .all(|t| t["objects_pending"] == json!([]))
                .then_some(m)
        },
    )
    .await;

    // The unlogged table: every row arrived, and it is unlogged on the target too.
    assert_same_rows(&src, &dst, "public.sessions", "id").await;
    assert_same_rows(&src, &dst, "public.orders", "id").await;
    let persistence: String = sqlx::query_scalar(
        "SELECT relpersistence::text FROM pg_class WHERE oid = 'public.sessions'::regclass",
    )
    .fetch_one(&dst)
    .await
    .unwrap();
    assert_eq!(persistence, "u");

    // The refreshed materialized view was refreshed after its table was synced, from the
    // target's rows: it holds ledger as it is now, which the source's (refreshed before the
    // last writes to ledger) does not until it is refreshed there too; it has its index.
    let bookkeeping: String = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'pgshift\\_%'",
    )
    .fetch_one(&dst)
    .await
    .unwrap();
    let (state, after_copy): (String, bool) = sqlx::query_as(&format!(
        "SELECT o.state, o.built_at >= t.copy_finished_at FROM {b}.schema_object o JOIN {b}.table_state t ON t.table_no = ANY (o.tables)
          WHERE o.kind = 'REFRESH' AND o.name = 'REFRESH MATERIALIZED VIEW public.totals'",
        b = bookkeeping
    ))
    .fetch_one(&dst)
    .await
    .unwrap();
    assert_eq!(state, "built");
    assert!(after_copy);
    let totals = "SELECT customer, total::text, n FROM public.totals ORDER BY customer";
    let read = |pool: &PgPool| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i32, String, i64)>(totals)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let (stale, moved) = (read(&src).await, read(&dst).await);
    assert_ne!(stale, moved, "the target's rows were computed, not copied");
    source
        .psql("app", "REFRESH MATERIALIZED VIEW public.totals")
        .await;
    assert_eq!(read(&src).await, moved);
    let (index, later_populated, scratch, remote): (bool, bool, bool, bool) = sqlx::query_as(
        "SELECT to_regclass('public.totals_customer') IS NOT NULL,
                (SELECT relispopulated FROM pg_class WHERE oid = 'public.later'::regclass),
                to_regclass('public.scratch_count') IS NOT NULL,
                to_regclass('public.remote_rates') IS NOT NULL",
    )
    .fetch_one(&dst)
    .await
    .unwrap();
    assert!(index, "the materialized view's index is built");
    assert!(
        !later_populated,
        "public.later stays WITH NO DATA, as on the source"
    );
    assert!(!scratch && !remote, "objects left out are not built");

    // The large objects: not on the target until the command named runs, then all of them,
    // with their OIDs, which the migrated rows refer to; nothing else is copied by it.
    let lo = &by_name(&m)[&("large_objects".to_string(), "5 large objects".to_string())];
    assert!(
        lo["words"]
            .as_str()
            .unwrap()
            .contains("The target holds 0 now"),
        "{lo}"
    );
    assert!(large_objects(&dst).await.is_empty());
    let run = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(lo["command"].as_str().unwrap())
        .env(
            "PATH",
            format!(
                "{}:{}",
                Path::new(DEFAULT_PG_BIN).display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env_remove("PGPASSWORD")
        .output()
        .await
        .expect("run the large objects' command");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let copied = large_objects(&dst).await;
    assert_eq!(copied.len(), 5);
    assert_eq!(copied, large_objects(&src).await);
    let dangling: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public.orders o
          WHERE o.doc IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_largeobject_metadata l WHERE l.oid = o.doc)",
    )
    .fetch_one(&dst)
    .await
    .unwrap();
    assert_eq!(dangling, 0);
    wait_drained(&server, "special", &src, DRAIN).await;
    assert_same_rows(&src, &dst, "public.orders", "id").await;

    // `migration show` and the migration's page name them too.
    let shown = cli(&server, &["show", "special"]).await;
    for line in [
        "5 large objects: left out",
        "The target holds 5 now",
        "materialized view public.totals: refreshed on the target",
        "unlogged table public.sessions: moved",
    ] {
        assert!(shown.contains(line), "{line:?} not in:\n{shown}");
    }
    let page = ui.get("/ui/migrations/special").await;
    assert!(
        page.body.contains("id=\"special-panel\"")
            && page
                .body
                .contains("<span class=\"mono\">public.later</span>"),
        "{}",
        page.body
    );
}

/// Schema "existing": pgshift builds and refreshes nothing, and says so with the command; an
/// unlogged table's rows arrive in the operator's (logged) table. The preview route's contract:
/// a token, the admin role, a registered cluster; and no migration may be named `preview`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn existing_tables_leave_materialized_views_to_the_operator() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    let tables = "CREATE TABLE public.ledger (id int PRIMARY KEY, customer int NOT NULL, amount numeric NOT NULL);
                  CREATE MATERIALIZED VIEW public.totals AS SELECT customer, sum(amount) AS total FROM public.ledger GROUP BY customer WITH NO DATA;";
    source
        .psql(
            "app",
            &format!(
                "{tables}
                 CREATE UNLOGGED TABLE public.sessions (id int PRIMARY KEY, token text NOT NULL);
                 INSERT INTO public.ledger SELECT g, g % 5, g FROM generate_series(1, 100) g;
                 INSERT INTO public.sessions SELECT g, md5(g::text) FROM generate_series(1, 100) g;
                 REFRESH MATERIALIZED VIEW public.totals;"
            ),
        )
        .await;
    target
        .psql(
            "app",
            &format!(
                "{tables} CREATE TABLE public.sessions (id int PRIMARY KEY, token text NOT NULL);"
            ),
        )
        .await;
    let server = server().await;
    register(&server, &source, &target).await;

    let (status, preview) = server.post("/migrations/preview", endpoints()).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["schema"], "existing", "{preview}");
    let objects = by_name(&preview);
    let totals = expect(
        &objects,
        "materialized_view",
        "public.totals",
        "left_out",
        "on the target it exists but holds no rows (WITH NO DATA)",
    );
    assert_eq!(
        totals["command"],
        "REFRESH MATERIALIZED VIEW public.totals;"
    );
    expect(
        &objects,
        "unlogged_table",
        "public.sessions",
        "moved",
        "LOGGED on the target, as you made it",
    );
    assert_eq!(objects.len(), 2, "{objects:#?}");

    let mut body = endpoints();
    body["name"] = json!("existing");
    let (status, created) = server.post("/migrations", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, body) = server.post("/migrations/existing/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    source
        .psql("app", "UPDATE public.sessions SET token = 'x' WHERE id < 10; INSERT INTO public.sessions VALUES (500, 'new');")
        .await;
    let src = source.connect("app").await;
    let dst = target.connect("app").await;
    wait_drained(&server, "existing", &src, DRAIN).await;
    assert_same_rows(&src, &dst, "public.sessions", "id").await;
    let populated: bool = sqlx::query_scalar(
        "SELECT relispopulated FROM pg_class WHERE oid = 'public.totals'::regclass",
    )
    .fetch_one(&dst)
    .await
    .unwrap();
    assert!(
        !populated,
        "pgshift refreshed nothing on the operator's target"
    );

    // The route's contract.
    let anonymous = server
        .client
        .post(server.url("/migrations/preview"))
        .json(&endpoints())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let viewer = server.token_for(Role::Viewer, "vic").await;
    let refused = server
        .client
        .post(server.url("/migrations/preview"))
        .bearer_auth(viewer)
        .json(&endpoints())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let (status, body) = server
        .post(
            "/migrations/preview",
            json!({"source": {"cluster": "nowhere", "database": "app"}, "target": {"cluster": "target", "database": "app"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "unknown_cluster", "{body}");
    let mut body = endpoints();
    body["name"] = json!("preview");
    let (status, body) = server.post("/migrations", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "invalid_name", "{body}");
}

/// A partition whose `DETACH PARTITION … CONCURRENTLY` was cancelled is named with the statement
/// that finishes it; its rows are not moved with its parent (PostgreSQL no longer shows them
/// there), and once the detach is finished it is a table the patterns select.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_detached_partition_is_named_and_stays_behind() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    source
        .psql(
            "app",
            "CREATE TABLE public.events (id int, at int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
             CREATE TABLE public.events_1 PARTITION OF public.events FOR VALUES FROM (0) TO (100);
             CREATE TABLE public.events_2 PARTITION OF public.events FOR VALUES FROM (100) TO (200);
             INSERT INTO public.events SELECT g, g FROM generate_series(0, 199) g;",
        )
        .await;
    let src = source.connect("app").await;
    // An open transaction that has read the table: the detach's second step waits for it, and
    // is cancelled, which leaves the partition pending.
    let mut reader = src.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM public.events")
        .execute(&mut *reader)
        .await
        .unwrap();
    let mut detacher = src.acquire().await.unwrap();
    sqlx::query("SET statement_timeout = '1s'")
        .execute(&mut *detacher)
        .await
        .unwrap();
    let cancelled =
        sqlx::query("ALTER TABLE public.events DETACH PARTITION public.events_2 CONCURRENTLY")
            .execute(&mut *detacher)
            .await;
    assert!(
        cancelled.is_err(),
        "the detach waited for the reader and was cancelled"
    );
    sqlx::query("RESET statement_timeout")
        .execute(&mut *detacher)
        .await
        .unwrap();
    drop(detacher);
    reader.rollback().await.unwrap();

    let server = server().await;
    register(&server, &source, &target).await;
    let (status, preview) = server.post("/migrations/preview", endpoints()).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    let objects = by_name(&preview);
    let pending = expect(
        &objects,
        "detaching_partition",
        "public.events_2",
        "left_out",
        "DETACH PARTITION … CONCURRENTLY did not finish",
    );
    assert_eq!(
        pending["command"],
        "ALTER TABLE public.events DETACH PARTITION public.events_2 FINALIZE;"
    );
    assert_eq!(preview["tables"].as_array().unwrap().len(), 1, "{preview}");

    let mut body = endpoints();
    body["name"] = json!("events");
    let (status, created) = server.post("/migrations", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, body) = server.post("/migrations/events/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_drained(&server, "events", &src, DRAIN).await;
    let dst = target.connect("app").await;
    assert_same_rows(&src, &dst, "public.events", "id, at").await;
    let (moved, behind): (i64, bool) = sqlx::query_as(
        "SELECT count(*), to_regclass('public.events_2') IS NULL FROM public.events",
    )
    .fetch_one(&dst)
    .await
    .unwrap();
    assert_eq!(moved, 100, "only events_1's rows are the table's");
    assert!(
        behind,
        "the half-detached partition is not built on the target"
    );

    source
        .psql("app", pending["command"].as_str().unwrap())
        .await;
    let mut body = endpoints();
    body["tables"] = json!(["public.events_2"]);
    let (status, preview) = server.post("/migrations/preview", body).await;
    assert_eq!(status, StatusCode::OK, "{preview}");
    assert_eq!(preview["tables"][0]["name"], "public.events_2", "{preview}");
    assert!(by_name(&preview).is_empty(), "{preview}");
}
