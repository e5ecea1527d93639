//! What a database's own roles can do to pgshift, and what pgshift must check before it installs
//! anything: row-level security, the target's TEMP privilege, a hostile `search_path` or
//! `standard_conforming_strings = off` set on the database, and removing a migration while the
//! application holds locks. Every test runs against real PostgreSQL servers.

use std::time::{Duration, Instant};

use pgshift::engine::pg;
use pgshift::store::PostgresStore;
use pgshift_tests::migrate::{assert_same_rows, capture_schema, wait_drained};
use pgshift_tests::server::TestServer;
use pgshift_tests::{init_tracing, wait_for, PgCluster, PgPool};
use serde_json::{json, Value};

const DRAIN: Duration = Duration::from_secs(120);

fn migration(name: &str, source_db: &str, target_db: &str) -> Value {
    json!({"name": name, "source": {"cluster": "source", "database": source_db},
           "target": {"cluster": "target", "database": target_db}})
}

/// Waits until the migration is synced or in error, and returns it: a test that expects one
/// of the two fails at once, with the migration's text, when it gets the other.
async fn synced_or_error(server: &TestServer, name: &str) -> Value {
    wait_for(
        &format!("{name} to be synced or in error"),
        DRAIN,
        || async {
            let m = server.migration(name).await;
            (m["state"] == "synced" || m["state"] == "error").then_some(m)
        },
    )
    .await
}

/// Counts the calls a hostile function recorded.
async fn calls(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM public.pwned")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The settings every connection pgshift opens must have, whatever the database or role says.
#[tokio::test]
async fn every_connection_pins_its_session_settings() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("app").await;
    pg.psql(
        "app",
        "CREATE SCHEMA app;
         ALTER DATABASE app SET search_path = app, pg_catalog;
         ALTER DATABASE app SET row_security = on;
         ALTER DATABASE app SET standard_conforming_strings = off",
    )
    .await;
    // The DSN's own options come first; pgshift's pinned settings win over them too.
    let dsn = format!("{}?options=-c%20search_path%3Dapp", pg.dsn("app"));
    let options = pg::options(&dsn, None).unwrap();
    let settings = "SELECT current_setting('search_path'), current_setting('row_security'), \
                    current_setting('standard_conforming_strings')";
    let expected = (
        "pg_catalog,pg_temp".to_string(),
        "off".to_string(),
        "on".to_string(),
    );
    let mut conn = pg::connect("the source", &options).await.unwrap();
    let got: (String, String, String) =
        sqlx::query_as(settings).fetch_one(&mut conn).await.unwrap();
    assert_eq!(got, expected, "pg::connect");
    let pool = pg::pool("the source", &options, 1).await.unwrap();
    let got: (String, String, String) = sqlx::query_as(settings).fetch_one(&pool).await.unwrap();
    assert_eq!(got, expected, "pg::pool");
}

/// Issue 12 item 9: a database owner sets the database's `search_path` to a schema of theirs
/// and shadows functions pgshift calls, on both sides. None of them ever runs in pgshift's
/// sessions, and replication is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_search_path_runs_no_code_in_pgshift_sessions() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    let table = "CREATE TABLE public.t (id int PRIMARY KEY, v text, n numeric);
                 CREATE TABLE public.pwned (who text, what text);
                 GRANT INSERT ON public.pwned TO PUBLIC;
                 CREATE SCHEMA app";
    for cluster in [&source, &target] {
        cluster.create_database("app").await;
        cluster.psql("app", table).await;
    }
    source
        .psql(
            "app",
            "CREATE FUNCTION app.txid_current_snapshot() RETURNS txid_snapshot LANGUAGE plpgsql AS $$
             BEGIN
                 IF current_setting('transaction_read_only') = 'off' THEN
                     INSERT INTO public.pwned VALUES (current_user, 'txid_current_snapshot');
                 END IF;
                 RETURN pg_catalog.txid_current_snapshot();
             END $$;
             ALTER DATABASE app SET search_path = app, pg_catalog;
             INSERT INTO public.t SELECT g, 'v' || g, g / 7.0 FROM generate_series(1, 500) g",
        )
        .await;
    target
        .psql(
            "app",
            "CREATE FUNCTION app.jsonb_array_elements(jsonb) RETURNS SETOF jsonb LANGUAGE plpgsql AS $$
             BEGIN
                 IF current_setting('transaction_read_only') = 'off' THEN
                     INSERT INTO public.pwned VALUES (current_user, 'jsonb_array_elements');
                 END IF;
                 RETURN QUERY SELECT pg_catalog.jsonb_array_elements($1);
             END $$;
             CREATE FUNCTION app.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
             BEGIN
                 IF current_setting('transaction_read_only') = 'off' THEN
                     INSERT INTO public.pwned VALUES (current_user, 'now');
                 END IF;
                 RETURN pg_catalog.now();
             END $$;
             ALTER DATABASE app SET search_path = app, pg_catalog",
        )
        .await;
    let server = TestServer::start().await;
    server.add_cluster("source", &source.admin_dsn()).await;
    server.add_cluster("target", &target.admin_dsn()).await;
    server
        .create_and_start("m", "app", "app", Some(vec!["public.t"]))
        .await;
    let (src, dst) = (source.connect("app").await, target.connect("app").await);
    wait_drained(&server, "m", &src, DRAIN).await;
    source
        .psql(
            "app",
            "UPDATE public.t SET v = 'changed' WHERE id % 5 = 0;
             DELETE FROM public.t WHERE id % 7 = 0;
             INSERT INTO public.t SELECT g, 'new', 1.5 FROM generate_series(501, 600) g",
        )
        .await;
    wait_drained(&server, "m", &src, DRAIN).await;
    assert_same_rows(&src, &dst, "public.t", "id").await;
    let who = |pool: PgPool| async move {
        sqlx::query_scalar::<_, String>("SELECT DISTINCT who || ': ' || what FROM public.pwned")
            .fetch_all(&pool)
            .await
            .unwrap()
    };
    let (on_source, on_target) = (who(src.clone()).await, who(dst.clone()).await);
    assert!(
        on_source.is_empty() && on_target.is_empty(),
        "code of the database owner ran in pgshift's sessions: source {on_source:?}, target {on_target:?}"
    );
}

/// Issue 12 item 9: with `standard_conforming_strings = off` on both databases (in pgshift's
/// sessions and the application's), a column name with a backslash and a quote still replicates:
/// pgshift's literals mean the same whatever the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literals_hold_with_standard_conforming_strings_off() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    let table = r#"CREATE TABLE public.odd ("k\" int PRIMARY KEY, "f'\" double precision, v text)"#;
    for cluster in [&source, &target] {
        cluster.create_database("app").await;
        cluster.psql("app", table).await;
        cluster
            .psql(
                "app",
                "ALTER DATABASE app SET standard_conforming_strings = off",
            )
            .await;
    }
    source
        .psql(
            "app",
            r#"INSERT INTO public.odd SELECT g, g / 3.0, 'v' || g FROM generate_series(1, 300) g"#,
        )
        .await;
    let server = TestServer::start().await;
    server.add_cluster("source", &source.admin_dsn()).await;
    server.add_cluster("target", &target.admin_dsn()).await;
    server.create_and_start("m", "app", "app", None).await;
    let m = synced_or_error(&server, "m").await;
    assert_eq!(m["state"], "synced", "{m}");
    let (src, dst) = (source.connect("app").await, target.connect("app").await);
    let scs: String = sqlx::query_scalar("SHOW standard_conforming_strings")
        .fetch_one(&src)
        .await
        .unwrap();
    assert_eq!(scs, "off", "the application's sessions run with it off");
    // The application's writes run the capture functions in its own sessions.
    for sql in [
        r#"UPDATE public.odd SET "f'\" = -0.0, v = 'changed' WHERE "k\" % 4 = 0"#,
        r#"UPDATE public.odd SET "k\" = "k\" + 1000 WHERE "k\" % 9 = 0"#,
        r#"DELETE FROM public.odd WHERE "k\" % 7 = 0"#,
        r#"INSERT INTO public.odd SELECT g, g, 'new' FROM generate_series(301, 400) g"#,
    ] {
        sqlx::raw_sql(sql)
            .execute(&src)
            .await
            .unwrap_or_else(|e| panic!("the application's {sql} failed: {e}"));
    }
    wait_drained(&server, "m", &src, DRAIN).await;
    assert_same_rows(&src, &dst, "public.odd", r#""k\""#).await;
}

/// Issue 12 item 9, the metadata store: the owner of the metadata database sets its
/// `search_path` to a schema of theirs holding an operator the store's queries would pick.
#[tokio::test]
async fn the_metadata_store_runs_no_code_from_the_database_search_path() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("meta").await;
    pg.psql(
        "meta",
        "CREATE TABLE public.pwned (who text, what text);
         GRANT INSERT ON public.pwned TO PUBLIC;
         CREATE SCHEMA evil;
         CREATE FUNCTION evil.name_eq_text(name, text) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.pwned VALUES (current_user, 'name = text');
             RETURN $1::text OPERATOR(pg_catalog.=) $2;
         END $$;
         CREATE OPERATOR evil.= (LEFTARG = name, RIGHTARG = text, FUNCTION = evil.name_eq_text);
         ALTER DATABASE meta SET search_path = evil, pg_catalog",
    )
    .await;
    let store = PostgresStore::open(&pg.dsn("meta")).await.unwrap();
    drop(store);
    let pool = pg.connect("meta").await;
    assert_eq!(
        calls(&pool).await,
        0,
        "the store ran the database owner's operator"
    );
}

/// Issue 9 item 6: row-level security hides rows from a role that is not the table's owner.
/// A selected table with RLS is refused at creation unless pgshift's role bypasses it; a table
/// that gets RLS after the creation makes the copy fail loudly instead of copying fewer rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_is_refused_or_fails_loudly_never_filters() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.psql("postgres", "CREATE ROLE migrator LOGIN").await;
    let tables = "CREATE TABLE public.accounts (id int PRIMARY KEY, owner text NOT NULL);
                  CREATE TABLE public.forced (id int PRIMARY KEY, v text);
                  CREATE TABLE public.late (id int PRIMARY KEY, v text)";
    for db in ["app", "later"] {
        source.create_database(db).await;
        target.create_database(db).await;
        target.psql(db, tables).await;
        source.psql(db, tables).await;
        source
            .psql(
                db,
                &format!(
                    "GRANT CREATE ON DATABASE {db} TO migrator;
                     GRANT SELECT, TRIGGER ON ALL TABLES IN SCHEMA public TO migrator;
                     ALTER TABLE public.forced OWNER TO migrator;
                     INSERT INTO public.accounts SELECT g, CASE WHEN g % 3 = 0 THEN 'migrator' ELSE 'someone' END
                       FROM generate_series(1, 300) g;
                     INSERT INTO public.forced SELECT g, 'f' || g FROM generate_series(1, 50) g;
                     INSERT INTO public.late SELECT g, 'l' || g FROM generate_series(1, 200) g"
                ),
            )
            .await;
    }
    source
        .psql(
            "app",
            "ALTER TABLE public.accounts ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own ON public.accounts USING (owner = current_user);
             ALTER TABLE public.forced ENABLE ROW LEVEL SECURITY;
             ALTER TABLE public.forced FORCE ROW LEVEL SECURITY",
        )
        .await;
    let server = TestServer::start().await;
    server
        .add_cluster(
            "source",
            &format!("postgresql://migrator@127.0.0.1:{}/postgres", source.port()),
        )
        .await;
    server.add_cluster("target", &target.admin_dsn()).await;

    // A table without RLS at creation that gets it before the copy: the copy must not read a
    // filtered view of it.
    let (status, body) = server
        .post(
            "/migrations",
            json!({"name": "later", "source": {"cluster": "source", "database": "later"},
                   "target": {"cluster": "target", "database": "later"}, "tables": ["public.late"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    source
        .psql("later", "ALTER TABLE public.late ENABLE ROW LEVEL SECURITY")
        .await;
    let (status, body) = server.post("/migrations/later/start", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let m = synced_or_error(&server, "later").await;
    assert_eq!(m["state"], "error", "the copy read a filtered table: {m}");
    assert!(
        m["error"]
            .as_str()
            .unwrap_or("")
            .contains("row-level security"),
        "{m}"
    );

    // Refused before anything is installed, naming the tables and the grant.
    let (status, body) = server
        .post("/migrations", migration("app", "app", "app"))
        .await;
    assert_eq!(
        status, 422,
        "a table with row-level security was accepted: {body}"
    );
    assert_eq!(body["error"]["code"], "missing_privilege", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    for needle in [
        "row-level security",
        "public.accounts",
        "public.forced",
        "ALTER ROLE \"migrator\" BYPASSRLS",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    assert!(!msg.contains("public.late"), "{msg}");
    let installed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname LIKE 'pgshift\\_%')",
    )
    .fetch_one(&source.connect("app").await)
    .await
    .unwrap();
    assert!(!installed, "the refusal came after an install");

    // With BYPASSRLS both migrations copy every row.
    source
        .psql("postgres", "ALTER ROLE migrator BYPASSRLS")
        .await;
    server.create_and_start("app", "app", "app", None).await;
    for db in ["app", "later"] {
        let (src, dst) = (source.connect(db).await, target.connect(db).await);
        wait_drained(&server, db, &src, DRAIN).await;
        for table in ["public.accounts", "public.forced", "public.late"] {
            if db == "later" && table != "public.late" {
                continue;
            }
            assert!(assert_same_rows(&src, &dst, table, "id").await > 0);
        }
    }
}

/// Issue 9 item 13: the copy builds a TEMP table on the target; a role without TEMP is refused
/// at creation with the grant to add, instead of the copy retrying forever. Row-level security
/// that applies to the target role is refused the same way as on the source, and the cluster's
/// "Test connection" report lists TEMP too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_role_without_temp_is_refused_at_creation() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    let table = "CREATE TABLE public.t (id int PRIMARY KEY, v text)";
    source.create_database("app").await;
    target.create_database("app").await;
    source.psql("app", table).await;
    source
        .psql(
            "app",
            "INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 100) g",
        )
        .await;
    target.psql("app", table).await;
    target
        .psql(
            "app",
            "CREATE ROLE writer LOGIN;
             REVOKE TEMP ON DATABASE app FROM PUBLIC;
             GRANT CREATE ON DATABASE app TO writer;
             GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.t TO writer;
             GRANT SET ON PARAMETER session_replication_role TO writer;
             ALTER TABLE public.t ENABLE ROW LEVEL SECURITY",
        )
        .await;
    let report = pgshift::service::cluster_probe::probe(&format!(
        "postgresql://writer@127.0.0.1:{}/app",
        target.port()
    ))
    .await
    .unwrap();
    assert!(
        report
            .missing
            .iter()
            .any(|m| m.contains(r#"GRANT TEMP ON DATABASE "app" TO "writer""#)),
        "{:?}",
        report.missing
    );
    let server = TestServer::start().await;
    server.add_cluster("source", &source.admin_dsn()).await;
    server
        .add_cluster(
            "target",
            &format!("postgresql://writer@127.0.0.1:{}/postgres", target.port()),
        )
        .await;
    let (status, body) = server
        .post("/migrations", migration("m", "app", "app"))
        .await;
    assert_eq!(
        status, 422,
        "a target role without TEMP was accepted: {body}"
    );
    assert_eq!(body["error"]["code"], "missing_privilege", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    for needle in [
        r#"TEMP on database "app" (GRANT TEMP ON DATABASE "app" TO "writer")"#,
        "row-level security on public.t",
        r#"ALTER ROLE "writer" BYPASSRLS"#,
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }

    target
        .psql(
            "app",
            "GRANT TEMP ON DATABASE app TO writer; ALTER TABLE public.t DISABLE ROW LEVEL SECURITY",
        )
        .await;
    server.create_and_start("m", "app", "app", None).await;
    let src = source.connect("app").await;
    wait_drained(&server, "m", &src, DRAIN).await;
    assert_eq!(
        assert_same_rows(&src, &target.connect("app").await, "public.t", "id").await,
        100
    );
}

/// Keys of extension types installed in `public`, outside pgshift's pinned `search_path`: a type
/// that casts implicitly to a built-in one (`citext`) copies, replicates and ends identical; one
/// with operators of its own (`ltree`) is refused at creation with the reason, instead of failing
/// on every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extension_type_keys_replicate_or_are_refused_at_creation() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    let schema = "CREATE EXTENSION citext; CREATE EXTENSION ltree;
                  CREATE TABLE public.ci (k citext PRIMARY KEY, v text);
                  CREATE TABLE public.tree (path ltree PRIMARY KEY, v text)";
    for cluster in [&source, &target] {
        cluster.create_database("app").await;
        cluster.psql("app", schema).await;
    }
    source
        .psql(
            "app",
            "INSERT INTO public.ci SELECT CASE WHEN g % 2 = 0 THEN 'Key' ELSE 'key' END || g, 'v' FROM generate_series(1, 5000) g",
        )
        .await;
    let server = TestServer::start().await;
    server.add_cluster("source", &source.admin_dsn()).await;
    server.add_cluster("target", &target.admin_dsn()).await;
    let (status, body) = server
        .post("/migrations", migration("m", "app", "app"))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "key_type_unsupported", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("public.tree") && msg.contains("path public.ltree"),
        "{msg}"
    );

    server
        .create_and_start("m", "app", "app", Some(vec!["public.ci"]))
        .await;
    let m = synced_or_error(&server, "m").await;
    assert_eq!(m["state"], "synced", "{m}");
    source
        .psql(
            "app",
            "UPDATE public.ci SET v = 'changed' WHERE k IN ('KEY10', 'key11');
             DELETE FROM public.ci WHERE k = 'KEY12'",
        )
        .await;
    let (src, dst) = (source.connect("app").await, target.connect("app").await);
    wait_drained(&server, "m", &src, DRAIN).await;
    assert_eq!(assert_same_rows(&src, &dst, "public.ci", "k").await, 4999);
}

/// Issue 9 item 16: removing a migration while a long transaction reads a captured table. The
/// application's own queries on that table never queue behind pgshift's DROP for long, and the
/// removal finishes once the reader is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_migration_never_makes_the_application_wait() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    let table = "CREATE TABLE public.t (id int PRIMARY KEY, v text)";
    source.create_database("app").await;
    target.create_database("app").await;
    source.psql("app", table).await;
    target.psql("app", table).await;
    source
        .psql(
            "app",
            "INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 100) g",
        )
        .await;
    let server = TestServer::start().await;
    server.add_cluster("source", &source.admin_dsn()).await;
    server.add_cluster("target", &target.admin_dsn()).await;
    server.create_and_start("m", "app", "app", None).await;
    let src = source.connect("app").await;
    wait_drained(&server, "m", &src, DRAIN).await;
    let schema = capture_schema(&src).await;

    // A long reader: holds ACCESS SHARE on the table until it commits.
    let mut reader = src.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM public.t")
        .execute(&mut *reader)
        .await
        .unwrap();

    let remove = {
        let (client, url, token) = (
            server.client.clone(),
            server.url("/migrations/m"),
            server.token.clone(),
        );
        tokio::spawn(async move {
            let resp = client.delete(url).bearer_auth(token).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        })
    };

    // The application goes on reading and writing while the removal waits for the reader.
    let app = source.connect("app").await;
    let started = Instant::now();
    let (mut slowest, mut saw_drop, mut i) = (Duration::ZERO, false, 0);
    while started.elapsed() < Duration::from_secs(4) {
        i += 1;
        let t0 = Instant::now();
        let mut tx = app.begin().await.unwrap();
        // Bounds the test on an engine that makes the application wait.
        sqlx::query("SET LOCAL statement_timeout = '10s'")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("UPDATE public.t SET v = $1 WHERE id = 1")
            .bind(format!("write {i}"))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("the application's write failed: {e}"));
        tx.commit().await.unwrap();
        slowest = slowest.max(t0.elapsed());
        let dropping: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                             WHERE application_name = 'pgshift' AND query LIKE 'DROP SCHEMA%')",
        )
        .fetch_one(&app)
        .await
        .unwrap();
        saw_drop |= dropping;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(saw_drop, "pgshift never tried to drop its schema");
    assert!(
        slowest < Duration::from_secs(1),
        "an application query waited {slowest:?} behind pgshift's DROP SCHEMA"
    );
    assert!(
        !remove.is_finished(),
        "the removal did not wait for the reader"
    );

    reader.commit().await.unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), remove)
        .await
        .expect("the removal finishes once the reader is gone")
        .unwrap();
    assert_eq!(status, 204, "{body}");
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1)
              + (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.t'::regclass)",
    )
    .bind(&schema)
    .fetch_one(&app)
    .await
    .unwrap();
    assert_eq!(left, 0, "the capture schema or a trigger is left");
}

/// The lock-retry mechanism behind removal: it gives up in bounded time naming the session that
/// holds the table, stops at once when cancelled, and leaves the connection's settings as they were.
#[tokio::test]
async fn short_lock_retries_give_up_naming_the_holder_and_stop_when_cancelled() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("app").await;
    pg.psql("app", "CREATE TABLE public.t (id int PRIMARY KEY)")
        .await;
    let pool = pg.connect("app").await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM public.t")
        .execute(&mut *holder)
        .await
        .unwrap();
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let options = pg::options(&pg.dsn("app"), None).unwrap();
    let mut conn = pg::connect("the source", &options).await.unwrap();
    let oid: sqlx::postgres::types::Oid = sqlx::query_scalar("SELECT 'public.t'::regclass::oid")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let retry = pg::LockRetry {
        lock_timeout: Duration::from_millis(100),
        give_up_after: Duration::from_secs(1),
        first_pause: Duration::from_millis(50),
        max_pause: Duration::from_millis(200),
    };
    let statement = "ALTER TABLE public.t ADD COLUMN v text";

    let started = Instant::now();
    let err = pg::run_with_short_locks(&mut conn, statement, "altering t", &[oid], retry, None)
        .await
        .expect_err("the table is held");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let msg = err.to_string();
    assert!(
        matches!(err, pgshift::engine::EngineError::Busy(_)),
        "{err:?}"
    );
    for needle in [
        "altering t".to_string(),
        format!("pid {holder_pid}"),
        "AccessShareLock on public.t".to_string(),
        "idle in transaction".to_string(),
    ] {
        assert!(msg.contains(&needle), "{needle:?} missing from: {msg}");
    }
    let lock_timeout: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        lock_timeout, "0",
        "the connection's lock_timeout was left changed"
    );

    let cancel = tokio_util::sync::CancellationToken::new();
    let trigger = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        })
    };
    let started = Instant::now();
    let long = pg::LockRetry {
        give_up_after: Duration::from_secs(60),
        ..retry
    };
    let err = pg::run_with_short_locks(
        &mut conn,
        statement,
        "altering t",
        &[oid],
        long,
        Some(&cancel),
    )
    .await
    .expect_err("cancelled");
    assert!(
        matches!(err, pgshift::engine::EngineError::Cancelled),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    trigger.await.unwrap();

    holder.commit().await.unwrap();
    pg::run_with_short_locks(&mut conn, statement, "altering t", &[oid], retry, None)
        .await
        .expect("the table is free");
}

/// Issue 13 item 6: a key whose collation differs between the sides ("C" on the source, ICU on
/// the target) is refused at creation: ranges cut in the source's order name other rows in the
/// target's, and a repair under two orders deleted correct rows. The same collation on both
/// sides (and keys that are not text at all) pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_collated_differently_on_the_target_is_refused() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    for cluster in [&source, &target] {
        cluster.create_database("app").await;
    }
    source
        .psql(
            "app",
            "CREATE TABLE word (w text COLLATE \"C\" PRIMARY KEY, n int);
             CREATE TABLE same (w text COLLATE \"C\" PRIMARY KEY, n int);",
        )
        .await;
    target
        .psql(
            "app",
            "CREATE TABLE word (w text COLLATE \"und-x-icu\" PRIMARY KEY, n int);
             CREATE TABLE same (w text COLLATE \"C\" PRIMARY KEY, n int);",
        )
        .await;
    let server = TestServer::start().await;
    server.add_cluster("source", &source.admin_dsn()).await;
    server.add_cluster("target", &target.admin_dsn()).await;
    let create = |tables: &str| {
        serde_json::json!({
            "name": "m",
            "source": {"cluster": "source", "database": "app"},
            "target": {"cluster": "target", "database": "app"},
            "tables": [tables],
        })
    };
    let (status, body) = server.post("/migrations", create("public.word")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "key_collation_differs", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("public.word: key column w"),
        "{body}"
    );
    let (status, body) = server.post("/migrations", create("public.same")).await;
    assert_eq!(status, 201, "{body}");
}
