//! Schema changes through pgshift (`POST /migrations/{name}/ddl`) under a concurrent workload:
//! each runs on the source with an event, and on the target at that point of the stream; rows
//! written before the change travel with the old columns, rows after it with the new ones.
//! Against real servers; every step ends with an exact comparison.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift_tests::case::Case;
use pgshift_tests::server::TestServer;
use pgshift_tests::{wait_for, PgPool};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SCHEMA: &str = "
CREATE TABLE t (id int PRIMARY KEY, a text, b int);
CREATE TABLE k (x int, y text);
CREATE TABLE gone (id int PRIMARY KEY, v text);
";
const SEED: &str = "
INSERT INTO t SELECT g, 'a' || g, g FROM generate_series(1, 2000) g;
INSERT INTO k SELECT g % 100, 'y' FROM generate_series(1, 500) g;
INSERT INTO gone SELECT g, 'v' FROM generate_series(1, 10) g;
";
const TABLES: &[(&str, &str)] = &[("t", "id"), ("k", "t::text COLLATE \"C\"")];

/// Writes to `t` and `k` through every change (only columns no change touches).
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn spawn(pool: PgPool, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, committed) = (stop.clone(), committed.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut next = 10_000 + seed as i32 * 100_000;
                while !stop.load(Ordering::Relaxed) {
                    let id = rng.gen_range(1..2000);
                    let sql = match rng.gen_range(0..4) {
                        0 => {
                            next += 1;
                            format!("INSERT INTO t (id, a) VALUES ({next}, 'new')")
                        }
                        1 => format!("UPDATE t SET a = md5(a) WHERE id = {id}"),
                        2 => format!("DELETE FROM t WHERE id = {id}"),
                        _ => format!("INSERT INTO k (x, y) VALUES ({}, 'w')", id % 100),
                    };
                    if sqlx::raw_sql(&sql).execute(&pool).await.is_ok() {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        Writer {
            stop,
            committed,
            task,
        }
    }

    async fn wait_more(&self, n: u64) {
        let before = self.committed.load(Ordering::Relaxed);
        wait_for("the writer to commit", Duration::from_secs(60), || async {
            (self.committed.load(Ordering::Relaxed) >= before + n).then_some(())
        })
        .await;
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
    }
}

async fn ddl(server: &TestServer, sql: &str) -> (StatusCode, Value) {
    server
        .post("/migrations/m/ddl", json!({ "sql": sql }))
        .await
}

async fn ddl_ok(server: &TestServer, sql: &str) {
    let (status, body) = ddl(server, sql).await;
    assert_eq!(status, StatusCode::OK, "{sql}: {body}");
}

async fn columns(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT attname || ' ' || format_type(atttypid, atttypmod) FROM pg_attribute
          WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attname",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every change the issue names, one after another while the application writes: each applied
/// on both sides at the same point, the new column's values replicated, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_changes_apply_on_both_sides_under_writes() {
    let case = Case::start(SCHEMA, SEED).await;
    // Each change lands while the application writes; the writer stops before each comparison.
    let writer = Writer::spawn(case.src.clone(), 1);
    writer.wait_more(50).await;
    // The case: a new column, then values written to it.
    ddl_ok(&case.server, "ALTER TABLE t ADD COLUMN w int").await;
    case.source
        .psql("app", "UPDATE t SET w = id % 7 WHERE id < 500")
        .await;
    writer.wait_more(50).await;
    writer.stop().await;
    case.drain_and_compare(TABLES).await;
    let with_w: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE w IS NOT NULL")
        .fetch_one(&case.dst)
        .await
        .unwrap();
    assert!(with_w > 0, "no value of the new column reached the target");

    for (round, (change, after)) in [
        (
            "ALTER TABLE t ADD COLUMN d text NOT NULL DEFAULT 'dflt'",
            "UPDATE t SET d = 'set' WHERE id % 3 = 0",
        ),
        (
            "ALTER TABLE t DROP COLUMN b",
            "UPDATE t SET a = a || '!' WHERE id % 5 = 0",
        ),
        (
            "ALTER TABLE t RENAME COLUMN w TO w2",
            "UPDATE t SET w2 = coalesce(w2, 0) + 1 WHERE id % 4 = 0",
        ),
        (
            "ALTER TABLE t ALTER COLUMN w2 TYPE bigint",
            "UPDATE t SET w2 = 9000000000 WHERE id % 6 = 0",
        ),
        (
            "CREATE INDEX t_a ON t (a)",
            "UPDATE t SET a = 'indexed' WHERE id % 7 = 0",
        ),
        (
            "ALTER TABLE k ADD COLUMN z int; ALTER TABLE t ADD COLUMN e jsonb",
            "UPDATE k SET z = x WHERE x < 50; UPDATE t SET e = '{\"e\": 1}' WHERE id < 100",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let writer = Writer::spawn(case.src.clone(), round as u64 + 2);
        writer.wait_more(20).await;
        ddl_ok(&case.server, change).await;
        case.source.psql("app", after).await;
        writer.wait_more(30).await;
        writer.stop().await;
        case.drain_and_compare(TABLES).await;
        assert_eq!(
            columns(&case.src, "t").await,
            columns(&case.dst, "t").await,
            "after {change}"
        );
    }
    let index: bool = sqlx::query_scalar("SELECT to_regclass('public.t_a') IS NOT NULL")
        .fetch_one(&case.dst)
        .await
        .unwrap();
    assert!(index, "the index was not built on the target");

    // A migrated table dropped: gone from the migration, which goes on.
    let writer = Writer::spawn(case.src.clone(), 20);
    ddl_ok(&case.server, "DROP TABLE gone").await;
    writer.wait_more(30).await;
    writer.stop().await;
    let m = case.drain().await;
    assert!(
        !m["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "public.gone"),
        "{m}"
    );
    let gone: bool = sqlx::query_scalar("SELECT to_regclass('public.gone') IS NULL")
        .fetch_one(&case.dst)
        .await
        .unwrap();
    assert!(gone, "the table was not dropped on the target");
    case.drain_and_compare(TABLES).await;

    // The key column renamed: capture follows it (the application's writes keep working).
    ddl_ok(&case.server, "ALTER TABLE t RENAME COLUMN id TO ident").await;
    case.write_and_compare(
        "INSERT INTO t (ident, a) VALUES (99999, 'renamed key'); UPDATE t SET ident = ident + 100000 WHERE ident < 10; DELETE FROM t WHERE ident BETWEEN 20 AND 30",
        &[("t", "ident"), ("k", "t::text COLLATE \"C\"")],
    )
    .await;
}

/// A statement that fails on the source changes nothing anywhere; transaction control is
/// refused; a change that fails on the target stops the migration there, named, until the
/// target lets it run, and then nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_schema_changes_are_reported_and_nothing_moves_on() {
    let case = Case::start(SCHEMA, SEED).await;
    let (status, body) = ddl(&case.server, "ALTER TABLE t ADD COLUMN a int").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "schema_change_failed", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exists"),
        "{body}"
    );
    let (status, body) = ddl(&case.server, "ALTER TABLE t ADD COLUMN q int; COMMIT").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        !columns(&case.src, "t")
            .await
            .iter()
            .any(|c| c.starts_with("q ")),
        "a statement before the COMMIT stayed on the source"
    );
    let (status, body) = ddl(&case.server, "  ").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // The target already has a column of that name: the change fails there.
    case.target
        .psql("app", "ALTER TABLE t ADD COLUMN v int")
        .await;
    ddl_ok(&case.server, "ALTER TABLE t ADD COLUMN v text").await;
    case.source
        .psql("app", "UPDATE t SET v = 'after' WHERE id < 100; INSERT INTO t (id, a, v) VALUES (50000, 'x', 'y')")
        .await;
    let m = wait_for(
        "the migration to report the change",
        Duration::from_secs(60),
        || async {
            let m = case.server.migration("m").await;
            let error = m["error"].as_str().unwrap_or_default().to_string();
            error.contains("failed on the target").then_some(m)
        },
    )
    .await;
    assert!(
        m["error"].as_str().unwrap().contains("ADD COLUMN v text"),
        "{m}"
    );
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM t WHERE id = 50000")
        .fetch_one(&case.dst)
        .await
        .unwrap();
    assert_eq!(none, 0, "rows after the change were applied without it");
    // The operator makes room on the target: the change goes through, then the rows.
    case.target.psql("app", "ALTER TABLE t DROP COLUMN v").await;
    case.drain_and_compare(TABLES).await;
}

/// pgshift restarts after the change is committed on the source but before the target has
/// applied it: the worker reads the events before it with the old columns, then applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_between_source_and_target_keeps_the_boundary() {
    let case = Case::start(SCHEMA, SEED).await;
    // Holds the worker: its next batch waits on the target's t.
    let mut hold = case.dst.begin().await.unwrap();
    sqlx::query("LOCK TABLE t IN SHARE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    case.source
        .psql("app", "UPDATE t SET a = 'before' WHERE id < 300")
        .await;
    ddl_ok(
        &case.server,
        "ALTER TABLE t ADD COLUMN w int, DROP COLUMN b",
    )
    .await;
    case.source
        .psql(
            "app",
            "UPDATE t SET a = 'after', w = 1 WHERE id BETWEEN 200 AND 600",
        )
        .await;
    // pgshift dies while its worker still waits before the change.
    let Case {
        source,
        target,
        src,
        dst,
        server,
    } = case;
    let data_dir = server.crash();
    hold.rollback().await.unwrap();
    let server = TestServer::start_in(&data_dir, pgshift_tests::server::test_settings()).await;
    let case = Case {
        source,
        target,
        src,
        dst,
        server,
    };
    case.drain_and_compare(TABLES).await;
}

/// The same route from the CLI (`pgshift migration ddl NAME -f FILE`) and from the dashboard's
/// form, which only admins see; a viewer's post is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_changes_from_the_cli_and_the_dashboard() {
    use pgshift::auth::Role;
    use pgshift_tests::dashboard::{create_user, UiClient};

    let case = Case::start(SCHEMA, SEED).await;
    let file = case.server.data_dir.join("change.sql");
    std::fs::write(&file, "ALTER TABLE t ADD COLUMN from_cli int;").unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let args = [
        "pgshift",
        "migration",
        "ddl",
        "m",
        "-f",
        file.to_str().unwrap(),
        "--url",
        &case.server.base,
        "--token",
        &case.server.token,
    ];
    let exit = pgshift::client::run_async(args.iter().copied(), &mut out, &mut err).await;
    let (out, err) = (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    );
    assert_eq!(exit, pgshift::client::Exit::Ok, "{out} {err}");
    assert!(out.contains("committed on the source"), "{out}");
    case.write_and_compare("UPDATE t SET from_cli = 1 WHERE id < 10", TABLES)
        .await;

    create_user(
        &case.server.data_dir,
        "adam",
        Role::Admin,
        "admin-password-1",
    )
    .await;
    create_user(
        &case.server.data_dir,
        "vera",
        Role::Viewer,
        "viewer-password-1",
    )
    .await;
    let mut viewer = UiClient::new(&case.server.base);
    viewer.sign_in("vera", "viewer-password-1").await;
    let page = viewer.get("/ui/migrations/m").await;
    assert!(
        !page.body.contains("ddl-form"),
        "a viewer sees the schema-change form"
    );
    let csrf = page.csrf();
    let page = viewer
        .post(
            "/ui/migrations/m/ddl",
            &[
                ("csrf", &csrf),
                ("sql", "ALTER TABLE t ADD COLUMN nope int"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);

    let mut admin = UiClient::new(&case.server.base);
    admin.sign_in("adam", "admin-password-1").await;
    let page = admin.get("/ui/migrations/m").await;
    assert!(page.body.contains("ddl-form"), "{}", page.body);
    let csrf = page.csrf();
    let page = admin
        .post(
            "/ui/migrations/m/ddl",
            &[
                ("csrf", &csrf),
                ("sql", "ALTER TABLE t ADD COLUMN from_ui text"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = admin
        .post(
            "/ui/migrations/m/ddl",
            &[
                ("csrf", &csrf),
                ("sql", "ALTER TABLE nosuch ADD COLUMN x int"),
            ],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.body
    );
    assert!(page.body.contains("does not exist"), "{}", page.body);
    case.write_and_compare("UPDATE t SET from_ui = 'ui' WHERE id < 10", TABLES)
        .await;
    assert!(
        !columns(&case.src, "t")
            .await
            .iter()
            .any(|c| c.starts_with("nope ")),
        "the viewer's change ran"
    );
    let (status, audit) = case.server.get("/audit?action=migration.ddl").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert!(audit.to_string().contains("migration.ddl"), "{audit}");
}

/// A table created through the route (on both sides at the same point), then added to the
/// migration while the application writes it: copied, then replicated like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_created_through_the_route_then_added_to_the_migration() {
    let case = Case::start(SCHEMA, SEED).await;
    ddl_ok(
        &case.server,
        "CREATE TABLE public.fresh (id int PRIMARY KEY, v text); CREATE TABLE public.fresh_log (at int, what text)",
    )
    .await;
    // The target has the tables once the worker has passed the change.
    case.drain().await;
    case.source
        .psql(
            "app",
            "INSERT INTO fresh SELECT g, 'v' || g FROM generate_series(1, 500) g;
             INSERT INTO fresh_log SELECT g % 10, 'w' FROM generate_series(1, 300) g;",
        )
        .await;
    let writer = {
        let pool = case.src.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                let sql = format!(
                    "UPDATE fresh SET v = v || '.' WHERE id = {}; INSERT INTO fresh_log VALUES ({}, 'live'); INSERT INTO fresh VALUES ({}, 'new')",
                    1 + i % 500,
                    i % 10,
                    1000 + i
                );
                sqlx::raw_sql(&sql).execute(&pool).await.unwrap();
            }
        })
    };
    let (status, body) = case
        .server
        .post(
            "/migrations/m/tables",
            json!({"tables": ["public.fresh", "public.fresh_log"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    writer.await.unwrap();
    case.drain_and_compare(&[
        ("t", "id"),
        ("fresh", "id"),
        ("fresh_log", "t::text COLLATE \"C\""),
    ])
    .await;
    // A change of the new table through the route follows it too.
    ddl_ok(&case.server, "ALTER TABLE fresh ADD COLUMN n int").await;
    case.write_and_compare("UPDATE fresh SET n = id WHERE id < 50", &[("fresh", "id")])
        .await;
}
