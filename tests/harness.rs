//! Tests of the test harness itself: real PostgreSQL servers start, survive a
//! crash with their commits, stop and start, run pgbench, and go away on drop.

use std::path::PathBuf;
use std::time::Duration;

use pgshift_tests::{init_tracing, table_rows, wait_for, PgCluster, DIR_PREFIX};

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_start_in_parallel_and_are_independent() {
    init_tracing();
    let (a, b) = tokio::join!(PgCluster::start(), PgCluster::start());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.root_dir(), b.root_dir());
    assert!(a.root_dir().to_string_lossy().starts_with(DIR_PREFIX));
    assert_eq!(
        a.dsn("shop"),
        format!("postgresql://postgres@127.0.0.1:{}/shop", a.port())
    );
    assert_eq!(a.admin_dsn(), a.dsn("postgres"));
    assert!(a.is_running() && b.is_running());

    a.create_database("shop").await;
    a.psql(
        "shop",
        "CREATE TABLE items (id int PRIMARY KEY, name text); \
         INSERT INTO items VALUES (1, 'one'), (2, 'two');",
    )
    .await;
    let pool = a.connect("shop").await;
    assert_eq!(
        table_rows(&pool, "items", "id").await,
        vec!["(1,one)".to_owned(), "(2,two)".to_owned()]
    );

    // b has no such database: the clusters really are separate servers.
    let other = b.admin_dsn().replace("/postgres", "/shop");
    assert!(sqlx::PgPool::connect(&other).await.is_err());

    // The settings the harness promises.
    let pool_b = b.connect("postgres").await;
    for (name, want) in [
        ("fsync", "on"),
        ("synchronous_commit", "on"),
        ("full_page_writes", "on"),
        ("max_connections", "100"),
        ("shared_buffers", "128MB"),
        ("listen_addresses", "127.0.0.1"),
        ("server_encoding", "UTF8"),
    ] {
        let got: String = sqlx::query_scalar(&format!("SHOW {name}"))
            .fetch_one(&pool_b)
            .await
            .unwrap();
        assert_eq!(got, want, "setting {name}");
    }
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&pool_b)
        .await
        .unwrap();
    assert_eq!(version / 10000, 15, "PostgreSQL 15 expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clusters_start_at_once() {
    init_tracing();
    let clusters = futures_util::future::join_all((0..4).map(|_| PgCluster::start())).await;
    let ports: std::collections::HashSet<u16> = clusters.iter().map(PgCluster::port).collect();
    assert_eq!(ports.len(), clusters.len());
    for pg in &clusters {
        let pool = pg.connect("postgres").await;
        let port: String = sqlx::query_scalar("SHOW port")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(port, pg.port().to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_committed_rows_and_start_again_recovers() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("crash").await;
    pg.psql("crash", "CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await;
    {
        let pool = pg.connect("crash").await;
        for i in 0..50 {
            sqlx::query("INSERT INTO t VALUES ($1, md5($1::text))")
                .bind(i)
                .execute(&pool)
                .await
                .unwrap();
        }
        // Keep a connection open across the crash: its backend must die too.
        let before = table_rows(&pool, "t", "id").await;
        assert_eq!(before.len(), 50);
        let old_pid = pg.postmaster_pid().unwrap();

        pg.kill9().await;
        assert!(!pg.is_running());
        assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_err());
        // The pid file stays behind, stale, as after a real crash.
        assert_eq!(pg.postmaster_pid(), Some(old_pid));

        pg.start_again().await;
        assert!(pg.is_running());
        assert!(
            pg.log_tail(50).contains("was interrupted"),
            "expected crash recovery:\n{}",
            pg.log_tail(50)
        );
        assert_ne!(pg.postmaster_pid(), Some(old_pid));
        let pool = pg.connect("crash").await;
        assert_eq!(table_rows(&pool, "t", "id").await, before);
        pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_again_and_restart_keep_data() {
    init_tracing();
    let pg = PgCluster::start_with(&[
        ("wal_level", "logical"),
        ("application_name", "it's quoted"),
    ])
    .await;
    pg.psql(
        "postgres",
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)",
    )
    .await;

    pg.stop().await;
    assert!(!pg.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", pg.port())).is_err());

    pg.start_again().await;
    assert!(pg.is_running());
    pg.restart().await;
    assert!(pg.is_running());

    let pool = pg.connect("postgres").await;
    assert_eq!(count(&pool, "SELECT sum(x)::bigint FROM kept").await, 42);
    let wal_level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(wal_level, "logical");
    let app: String =
        sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'application_name'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(app, "it's quoted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initializes_and_runs_in_the_background() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("bench").await;
    pg.pgbench(&["-i", "-s", "1", "-q", "bench"]).await;
    let pool = pg.connect("bench").await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM pgbench_accounts").await,
        100_000
    );

    let child = pg.spawn_pgbench(&["-c", "2", "-t", "100", "-n", "bench"]);
    // While it runs, its sessions show up on the server.
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("number of transactions actually processed: 200/200"),
        "{stdout}"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM pgbench_history").await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_stops_the_server_and_removes_its_directory() {
    init_tracing();
    let pg = PgCluster::start().await;
    let root: PathBuf = pg.root_dir().to_owned();
    let pid = pg.postmaster_pid().unwrap();
    let port = pg.port();
    // An open connection must not keep anything alive.
    let pool = pg.connect("postgres").await;
    assert_eq!(count(&pool, "SELECT 1::bigint").await, 1);
    drop(pg);
    assert!(!root.exists(), "{} still exists", root.display());
    assert!(
        !PathBuf::from(format!("/proc/{pid}")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z")
        }
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_cleans_up_when_a_test_panics() {
    init_tracing();
    let root = std::sync::Arc::new(std::sync::Mutex::new(None::<PathBuf>));
    let seen = root.clone();
    let result = tokio::spawn(async move {
        let pg = PgCluster::start().await;
        *seen.lock().unwrap() = Some(pg.root_dir().to_owned());
        pg.psql("postgres", "SELECT no_such_function()").await;
    })
    .await;
    assert!(result.unwrap_err().is_panic());
    let root = root.lock().unwrap().clone().expect("cluster started");
    assert!(!root.exists(), "{} still exists", root.display());
}

#[tokio::test]
async fn wait_for_returns_the_value_once_ready() {
    let start = std::time::Instant::now();
    let mut calls = 0;
    let v = wait_for("the third call", Duration::from_secs(5), || {
        calls += 1;
        let n = calls;
        async move { (n >= 3).then_some(n * 10) }
    })
    .await;
    assert_eq!(v, 30);
    assert!(start.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
#[should_panic(expected = "waiting for Godot")]
async fn wait_for_panics_on_timeout() {
    wait_for("Godot", Duration::from_millis(300), || async { None::<()> }).await;
}
