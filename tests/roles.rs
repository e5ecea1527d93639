//! Managed-service roles (issue 10, section 4): pgshift connects to both sides as roles that are
//! no superusers and hold only the privileges the README lists, while the application's tables
//! belong to another role (the app owner), as on a managed service. The whole flow runs with
//! them: creation (schema "existing" and "create"), the copy and the apply under writes, a
//! verification, the cutover with the way back armed, the way back replicating and cut over,
//! and the removal of both migrations. A target role that may not set
//! `session_replication_role` is refused with the exact grant to add.

use std::time::Duration;

use pgshift_tests::cutover::{assert_same, cutover, gate, relaxed, wait_operation, Writers};
use pgshift_tests::migrate::wait_drained;
use pgshift_tests::server::TestServer;
use pgshift_tests::{init_tracing, wait_for, PgCluster, PgPool};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The application's schema, made by its owner: the tables `cutover::Writers` writes, a table
/// in a schema of its own numbered by a sequence it does not own, a foreign key, and a trigger that stamps each row
/// with the role that wrote it, which would overwrite the replicated value if it fired while
/// pgshift applies.
const SCHEMA: &str = r#"
SET ROLE app_owner;
CREATE TABLE item (
    id         bigserial PRIMARY KEY,
    writer     integer NOT NULL,
    n          integer NOT NULL,
    note       text,
    score      double precision,
    at         timestamptz NOT NULL DEFAULT now(),
    touched_by text
);
CREATE TABLE ledger (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    item_id bigint NOT NULL REFERENCES item (id),
    amount  numeric NOT NULL
);
CREATE TABLE "Odd Pair" (k1 integer, k2 text, v jsonb, PRIMARY KEY (k1, k2));
CREATE SEQUENCE invoice_no;
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN NEW.touched_by := current_user; RETURN NEW; END$$;
CREATE TRIGGER item_touch BEFORE INSERT OR UPDATE ON item FOR EACH ROW EXECUTE FUNCTION touch();
CREATE SCHEMA shop;
CREATE TABLE shop.note (id bigint PRIMARY KEY DEFAULT nextval('public.invoice_no'), body text);
RESET ROLE;
"#;

const SEED: &str = r#"
SET ROLE app_owner;
INSERT INTO item (writer, n, note, score) SELECT 0, g, 'seed ' || g, g / 7.0 FROM generate_series(1, 5000) g;
INSERT INTO ledger (item_id, amount) SELECT id, id * 1.5 FROM item;
INSERT INTO "Odd Pair" SELECT g, 'k' || g, jsonb_build_object('g', g) FROM generate_series(1, 3000) g;
INSERT INTO shop.note (body) SELECT 'note ' || g FROM generate_series(1, 500) g;
RESET ROLE;
"#;

/// What pgshift's role on the source holds, as the README lists it.
const SOURCE_GRANTS: &str = r#"
GRANT CREATE ON DATABASE app TO shift_src;
GRANT USAGE ON SCHEMA public, shop TO shift_src;
GRANT SELECT, TRIGGER ON ALL TABLES IN SCHEMA public, shop TO shift_src;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public, shop TO shift_src;
-- The way back writes here.
GRANT INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public, shop TO shift_src;
GRANT UPDATE ON ALL SEQUENCES IN SCHEMA public, shop TO shift_src;
GRANT SET ON PARAMETER session_replication_role TO shift_src;
"#;

/// What pgshift's role on the target holds when the app owner made the tables there.
const TARGET_GRANTS_EXISTING: &str = r#"
GRANT CREATE, TEMP ON DATABASE app TO shift_dst;
GRANT USAGE ON SCHEMA public, shop TO shift_dst;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public, shop TO shift_dst;
GRANT SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public, shop TO shift_dst;
GRANT SET ON PARAMETER session_replication_role TO shift_dst;
-- The way back captures here.
GRANT TRIGGER ON ALL TABLES IN SCHEMA public, shop TO shift_dst;
"#;

/// What pgshift's role on the target holds when it builds the tables itself (it owns them).
const TARGET_GRANTS_CREATE: &str = r#"
GRANT CREATE, TEMP ON DATABASE app TO shift_dst;
GRANT CREATE ON SCHEMA public TO shift_dst;
GRANT SET ON PARAMETER session_replication_role TO shift_dst;
"#;

/// What the application needs on tables pgshift's target role built (and owns): run by that
/// role after the cutover, before the application moves.
const APP_GRANTS_AFTER_CREATE: &str = r#"
GRANT USAGE ON SCHEMA shop TO app_owner;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public, shop TO app_owner;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public, shop TO app_owner;
"#;

const WAIT: Duration = Duration::from_secs(180);

/// `postgresql://ROLE@127.0.0.1:PORT/DB` (the harness's servers trust local connections).
fn dsn_as(cluster: &PgCluster, role: &str, db: &str) -> String {
    format!("postgresql://{role}@127.0.0.1:{}/{db}", cluster.port())
}

/// The roles of one server: the app owner owns database `app` (so its `public` schema too);
/// pgshift's role holds nothing yet.
async fn roles(cluster: &PgCluster, shift: &str) {
    cluster
        .psql(
            "postgres",
            &format!("CREATE ROLE app_owner LOGIN; CREATE ROLE {shift} LOGIN"),
        )
        .await;
    cluster
        .psql("postgres", "CREATE DATABASE app OWNER app_owner")
        .await;
}

struct Sides {
    source: PgCluster,
    target: PgCluster,
    /// Superuser pools, to compare and inspect.
    src: PgPool,
    dst: PgPool,
}

/// Two servers with the roles, the source's schema and rows, and the source's grants; with
/// `existing`, the app owner's schema on the target too, and the target's grants for it.
async fn sides(existing: bool) -> Sides {
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    roles(&source, "shift_src").await;
    roles(&target, "shift_dst").await;
    source.psql("app", SCHEMA).await;
    source.psql("app", SEED).await;
    source.psql("app", SOURCE_GRANTS).await;
    if existing {
        target.psql("app", SCHEMA).await;
        target.psql("app", TARGET_GRANTS_EXISTING).await;
    } else {
        target.psql("app", TARGET_GRANTS_CREATE).await;
    }
    let src = source.connect("app").await;
    let dst = target.connect("app").await;
    Sides {
        source,
        target,
        src,
        dst,
    }
}

async fn register(server: &TestServer, sides: &Sides) {
    server
        .add_cluster("source", &dsn_as(&sides.source, "shift_src", "postgres"))
        .await;
    server
        .add_cluster("target", &dsn_as(&sides.target, "shift_dst", "postgres"))
        .await;
}

/// Creates migration `name` from database `app` into `target_db`.
async fn create_into(
    server: &TestServer,
    name: &str,
    schema: &str,
    target_db: &str,
) -> (StatusCode, Value) {
    server
        .post(
            "/migrations",
            json!({
                "name": name,
                "source": {"cluster": "source", "database": "app"},
                "target": {"cluster": "target", "database": target_db},
                "schema": schema,
            }),
        )
        .await
}

async fn assert_same_tables(a: &PgPool, b: &PgPool) {
    assert_same(a, b).await;
    pgshift_tests::migrate::assert_same_rows(a, b, "shop.note", "id").await;
}

async fn scalar_i64(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The rows of `item` on `pool` that the application's trigger did not stamp with the app
/// owner (the trigger fired in a pgshift session, or did not fire at all).
async fn unstamped_items(pool: &PgPool) -> i64 {
    scalar_i64(
        pool,
        "SELECT count(*) FROM item WHERE touched_by IS DISTINCT FROM 'app_owner'",
    )
    .await
}

/// Writes an item on `cluster` as the app owner and checks that the item's trigger stamped it
/// there.
async fn write_as_app(cluster: &PgCluster) {
    let app = PgPool::connect(&dsn_as(cluster, "app_owner", "app"))
        .await
        .unwrap();
    let by: Option<String> = sqlx::query_scalar(
        "INSERT INTO item (writer, n, note) VALUES (-2, 0, 'app') RETURNING touched_by",
    )
    .fetch_one(&app)
    .await
    .unwrap();
    assert_eq!(
        by.as_deref(),
        Some("app_owner"),
        "the trigger fires for the application"
    );
    app.close().await;
}

/// Every writer stopped on the freeze, none on another error.
fn assert_frozen(writers: &Writers) {
    let (frozen, errors) = (
        writers.frozen.lock().unwrap(),
        writers.errors.lock().unwrap(),
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(frozen.len(), 3, "{frozen:?}");
}

/// Nothing of pgshift is left in the database: no schema of its own, no trigger on the tables
/// but the application's.
async fn assert_nothing_left(pool: &PgPool, side: &str) {
    let schemas = scalar_i64(
        pool,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgshift\\_%'",
    )
    .await;
    assert_eq!(schemas, 0, "pgshift's schemas left on the {side}");
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger WHERE NOT tgisinternal AND tgname <> 'item_touch'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        triggers.is_empty(),
        "triggers left on the {side}: {triggers:?}"
    );
}

/// The whole flow with least-privileged roles on both sides.
async fn whole_flow(schema: &str) {
    init_tracing();
    let sides = sides(schema == "existing").await;
    let server = TestServer::start().await;
    register(&server, &sides).await;

    let (status, body) = create_into(&server, "m", schema, "app").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.post("/migrations/m/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The application writes through the copy and the catch-up. (Not while capture installs:
    // that transaction locks every table in turn, and a transaction writing two of them in
    // another order deadlocks with it.)
    pgshift_tests::migrate::capture_schema(&sides.src).await;
    let mut writers = Writers::spawn(dsn_as(&sides.source, "app_owner", "app"), 3);
    wait_for("writers to commit", WAIT, || async {
        (writers.committed() > 100).then_some(())
    })
    .await;
    sides
        .source
        .psql(
            "app",
            "SET ROLE app_owner; UPDATE shop.note SET body = body || '!' WHERE id % 7 = 0; DELETE FROM shop.note WHERE id % 11 = 0;",
        )
        .await;
    wait_for("the migration to be synced", WAIT, || async {
        let m = server.migration("m").await;
        let built = m["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["objects_pending"].as_array().is_none_or(|a| a.is_empty()));
        (m["state"] == "synced" && built).then_some(())
    })
    .await;

    // A verification while the writers go on finds nothing.
    let (status, op) = server
        .post(
            "/migrations/m/verify",
            json!({"repair": false, "max_lag_seconds": 60}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{op}");
    let op = wait_operation(&server, op["id"].as_str().unwrap(), WAIT).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["result"]["differs"], false, "{op}");

    // The cutover, with the way back armed, under the writers: each ends on the freeze.
    let op = cutover(&server, "m", relaxed(json!({"reverse": true}))).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    writers.join().await;
    assert_frozen(&writers);
    assert_same_tables(&sides.src, &sides.dst).await;
    // The target's trigger fired for no replicated row.
    assert_eq!(unstamped_items(&sides.dst).await, 0);

    if schema == "create" {
        // pgshift's role owns what it built; the application gets its rights there.
        let owner = PgPool::connect(&dsn_as(&sides.target, "shift_dst", "app"))
            .await
            .unwrap();
        sqlx::raw_sql(APP_GRANTS_AFTER_CREATE)
            .execute(&owner)
            .await
            .unwrap();
        owner.close().await;
    }
    // The application moves: the new server's trigger fires for its writes, which the way
    // back carries to the old server.
    let back = wait_for("the way back to be synced", WAIT, || async {
        let m = server.migration("m-reverse").await;
        (m["state"] == "synced").then_some(m)
    })
    .await;
    assert_eq!(back["source"]["cluster"], "target", "{back}");
    write_as_app(&sides.target).await;
    wait_for("the new server's write on the old one", WAIT, || async {
        let n = scalar_i64(&sides.src, "SELECT count(*) FROM item WHERE writer = -2").await;
        (n == 1).then_some(())
    })
    .await;
    let mut writers = Writers::spawn(dsn_as(&sides.target, "app_owner", "app"), 3);
    wait_for("writes on the new server", WAIT, || async {
        (writers.committed() > 100).then_some(())
    })
    .await;

    // Cutting back: the old server has everything and takes writes again.
    let op = cutover(&server, "m-reverse", relaxed(json!({}))).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    writers.join().await;
    assert_frozen(&writers);
    assert_same_tables(&sides.src, &sides.dst).await;
    assert_eq!(unstamped_items(&sides.src).await, 0);
    assert_eq!(unstamped_items(&sides.dst).await, 0);
    write_as_app(&sides.source).await;

    // Finishing: both migrations removed, nothing of pgshift left on either server.
    for name in ["m-reverse", "m"] {
        let (status, body) = server
            .delete(&format!("/migrations/{name}?unfreeze_source=true"))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "removing {name}: {body}");
    }
    assert_nothing_left(&sides.src, "source").await;
    assert_nothing_left(&sides.dst, "target").await;
}

/// The app owner made the target's tables; pgshift's roles hold only the README's grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_flow_with_least_privileges_into_existing_tables() {
    whole_flow("existing").await;
}

/// pgshift's target role builds the tables (and owns them); its source role holds only the
/// README's grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_flow_with_least_privileges_into_an_empty_database() {
    whole_flow("create").await;
}

/// A cutover that only runs the gates (`dry_run`), with `reverse`.
async fn dry_run(server: &TestServer, body: Value) -> Value {
    let mut body = relaxed(body);
    body["dry_run"] = json!(true);
    body["reverse"] = json!(true);
    cutover(server, "m", body).await
}

/// Where a role lacks what a step needs, pgshift says so before it changes anything, naming the
/// exact grant: a target role that may not set `session_replication_role` is refused at
/// creation (schema "existing" and "create") and stops the run at its start when the grant was
/// revoked meanwhile; the cutover's gates name the grants the sequences and the way back need,
/// and say when other roles' transactions are hidden from the source role.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_grants_are_named_before_anything_changes() {
    init_tracing();
    let sides = sides(true).await;
    // An empty database for schema "create", set up as the README says.
    sides
        .target
        .psql("postgres", "CREATE DATABASE fresh OWNER app_owner")
        .await;
    sides
        .target
        .psql(
            "fresh",
            "GRANT CREATE, TEMP ON DATABASE fresh TO shift_dst; GRANT CREATE ON SCHEMA public TO shift_dst;",
        )
        .await;
    let revoke = "REVOKE SET ON PARAMETER session_replication_role FROM shift_dst";
    let grant = "GRANT SET ON PARAMETER session_replication_role TO \"shift_dst\"";
    sides.target.psql("postgres", revoke).await;
    let server = TestServer::start().await;
    register(&server, &sides).await;

    for (schema, db) in [("existing", "app"), ("create", "fresh")] {
        let (status, body) = create_into(&server, "m", schema, db).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{schema}: {body}");
        assert_eq!(body["error"]["code"], "missing_privilege", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(grant), "{schema}: {message}");
    }
    let installed = scalar_i64(
        &sides.dst,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgshift\\_%'",
    )
    .await;
    assert_eq!(installed, 0, "a refusal came after an install");

    // With the grant it runs; a grant revoked meanwhile stops the next run at its start.
    sides.target.psql("postgres", &grant.replace('"', "")).await;
    let (status, body) = create_into(&server, "m", "existing", "app").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = server.post("/migrations/m/start", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_drained(&server, "m", &sides.src, WAIT).await;
    sides.target.psql("postgres", revoke).await;
    for step in ["pause", "resume"] {
        let (status, body) = server
            .post(&format!("/migrations/m/{step}"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{step}: {body}");
    }
    let m = wait_for("the run to stop for the grant", WAIT, || async {
        let m = server.migration("m").await;
        (m["state"] == "error").then_some(m)
    })
    .await;
    assert!(m["error"].as_str().unwrap().contains(grant), "{m}");
    // Granted again, the run goes on by itself.
    sides.target.psql("postgres", &grant.replace('"', "")).await;
    sides
        .source
        .psql(
            "app",
            "SET ROLE app_owner; UPDATE shop.note SET body = 'after' WHERE id = 1",
        )
        .await;
    wait_drained(&server, "m", &sides.src, WAIT).await;
    assert_same_tables(&sides.src, &sides.dst).await;

    // The gates name what the sequences and the way back need.
    sides
        .source
        .psql(
            "app",
            "REVOKE SET ON PARAMETER session_replication_role FROM shift_src;
             REVOKE UPDATE ON ALL SEQUENCES IN SCHEMA public FROM shift_src;",
        )
        .await;
    sides
        .target
        .psql(
            "app",
            "REVOKE UPDATE ON ALL SEQUENCES IN SCHEMA public FROM shift_dst",
        )
        .await;
    let op = dry_run(&server, json!({})).await;
    let sequences =
        "GRANT SELECT, UPDATE ON SEQUENCE public.invoice_no, public.item_id_seq, public.ledger_id_seq";
    let g = gate(&op, "sequences");
    assert_eq!(g["passed"], false, "{op}");
    assert!(
        g["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("{sequences} TO \"shift_dst\"")),
        "{g}"
    );
    let g = gate(&op, "reverse_ready");
    assert_eq!(g["passed"], false, "{op}");
    let reason = g["reason"].as_str().unwrap();
    for needle in [
        format!("{sequences} TO \"shift_src\""),
        "GRANT SET ON PARAMETER session_replication_role TO \"shift_src\"".to_string(),
    ] {
        assert!(reason.contains(&needle), "{needle} missing from {reason}");
    }

    // A long transaction of the application's: the source role sees its age only with
    // pg_read_all_stats, and the gate says so.
    let app = PgPool::connect(&dsn_as(&sides.source, "app_owner", "app"))
        .await
        .unwrap();
    let mut long = app.begin().await.unwrap();
    sqlx::query("UPDATE item SET n = n WHERE id = 1")
        .execute(&mut *long)
        .await
        .unwrap();
    sides
        .source
        .psql("postgres", "GRANT pg_read_all_stats TO shift_src")
        .await;
    let seen = wait_for("the long transaction in the gate", WAIT, || async {
        let g = gate(
            &dry_run(&server, json!({"max_lag_seconds": 1})).await,
            "long_transactions",
        );
        (g["passed"] == false).then_some(g)
    })
    .await;
    assert!(
        seen["reason"].as_str().unwrap().contains("(app_owner)"),
        "{seen}"
    );
    sides
        .source
        .psql("postgres", "REVOKE pg_read_all_stats FROM shift_src")
        .await;
    let g = gate(
        &dry_run(&server, json!({"max_lag_seconds": 1})).await,
        "long_transactions",
    );
    assert_eq!(g["passed"], true, "{g}");
    assert!(
        g["reason"]
            .as_str()
            .unwrap()
            .contains("GRANT pg_read_all_stats TO \"shift_src\""),
        "{g}"
    );
    long.rollback().await.unwrap();
}
