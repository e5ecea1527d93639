//! Cluster passwords at rest: a migration between two password-protected clusters runs to
//! synced, and the password appears in no API response and in no file of the data directory
//! (the SQLite metadata and its WAL, the token key, the secret keyring). After a restart on the
//! same data directory the stored DSNs still decrypt. Every log line the process writes during
//! the test, at debug level, is captured and searched for the password too, including for the
//! refusals (a wrong password, an unreachable host) whose messages quote the DSN's other parts.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgshift_tests::migrate::wait_drained;
use pgshift_tests::server::{test_settings, TestServer};
use pgshift_tests::PgCluster;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;

/// Everything the process logs, kept in memory to be searched.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl CapturedLog {
    /// Installs the capture as the process's subscriber, at debug level for every crate.
    fn install() -> CapturedLog {
        let log = CapturedLog::default();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(log.clone())
            .init();
        log
    }

    /// The log from byte `from` on.
    fn text_from(&self, from: usize) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()[from..]).into_owned()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Gives `migrator` a password on `cluster` and requires it (scram) over TCP.
async fn password_role(cluster: &PgCluster, password: &str) {
    cluster
        .psql(
            "postgres",
            &format!("CREATE ROLE migrator LOGIN SUPERUSER PASSWORD '{password}'"),
        )
        .await;
    let hba = cluster.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all migrator 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    cluster.psql("postgres", "SELECT pg_reload_conf()").await;
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The password is in none of the data directory's files, and the named ones exist.
fn assert_not_in_files(data_dir: &Path, password: &str) {
    let mut files = Vec::new();
    files_under(data_dir, &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["pgshift.db", "server-key.json", "secret-keys.json"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {}: {names:?}",
            data_dir.display()
        );
    }
    for path in &files {
        // SQLite's journal files come and go while the server writes; one gone since the listing
        // holds nothing any more.
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("reading {}: {e}", path.display()),
        };
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "the password is stored in plain text in {}",
            path.display()
        );
    }
}

/// The DSNs as stored in the SQLite metadata.
async fn stored_dsns(data_dir: &Path) -> Vec<String> {
    let mut conn = SqliteConnectOptions::new()
        .filename(data_dir.join("pgshift.db"))
        .read_only(true)
        .connect()
        .await
        .expect("open the metadata file");
    sqlx::query_scalar("SELECT dsn FROM cluster ORDER BY name")
        .fetch_all(&mut conn)
        .await
        .expect("read the stored DSNs")
}

/// Checks the status and keeps the body, to search every response for the password.
#[track_caller]
fn record(
    responses: &mut Vec<Value>,
    what: &str,
    (status, body): (StatusCode, Value),
    want: StatusCode,
) -> Value {
    assert_eq!(status, want, "{what}: {body}");
    responses.push(body.clone());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_passwords_are_encrypted_at_rest() {
    let log = CapturedLog::install();
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let wrong_password = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    tokio::join!(
        password_role(&source, &password),
        password_role(&target, &password)
    );
    // The test's own `CREATE ROLE … PASSWORD` is logged by sqlx; pgshift's log starts here.
    let log_from = log.len();
    let table = "CREATE TABLE item (id int PRIMARY KEY, note text)";
    for c in [&source, &target] {
        c.create_database("app").await;
        c.psql("app", table).await;
    }
    source
        .psql(
            "app",
            "INSERT INTO item SELECT i, 'row ' || i FROM generate_series(1, 5000) i",
        )
        .await;
    let src = source.connect("app").await;
    let dst = target.connect("app").await;

    let server = TestServer::start().await;
    let mut responses: Vec<Value> = Vec::new();
    let dsn = |c: &PgCluster| {
        format!(
            "postgresql://migrator:{password}@127.0.0.1:{}/postgres",
            c.port()
        )
    };
    for (name, cluster) in [("source", &source), ("target", &target)] {
        let body = record(
            &mut responses,
            "adding a cluster",
            server
                .post("/clusters", json!({"name": name, "dsn": dsn(cluster)}))
                .await,
            StatusCode::CREATED,
        );
        assert_eq!(
            body["dsn"],
            format!(
                "postgresql://migrator@127.0.0.1:{}/postgres",
                cluster.port()
            )
        );
    }
    // Refusals quote the DSN back without its password.
    let wrong = format!(
        "postgresql://migrator:{wrong_password}@127.0.0.1:{}/postgres",
        source.port()
    );
    let body = record(
        &mut responses,
        "a wrong password",
        server
            .post("/clusters", json!({"name": "wrong", "dsn": wrong}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_eq!(body["error"]["code"], "authentication_failed", "{body}");
    let nobody = format!("postgresql://migrator:{password}@127.0.0.1:1/postgres");
    let body = record(
        &mut responses,
        "an unreachable host",
        server
            .post("/clusters", json!({"name": "nobody", "dsn": nobody}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_eq!(body["error"]["code"], "unreachable", "{body}");
    record(
        &mut responses,
        "creating the migration",
        server
            .post(
                "/migrations",
                json!({
                    "name": "m",
                    "source": {"cluster": "source", "database": "app"},
                    "target": {"cluster": "target", "database": "app"},
                }),
            )
            .await,
        StatusCode::CREATED,
    );
    record(
        &mut responses,
        "starting the migration",
        server.post("/migrations/m/start", json!({})).await,
        StatusCode::OK,
    );
    source
        .psql(
            "app",
            "INSERT INTO item SELECT i, 'late ' || i FROM generate_series(5001, 5100) i",
        )
        .await;
    let synced = wait_drained(&server, "m", &src, Duration::from_secs(120)).await;
    responses.push(synced);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM item")
        .fetch_one(&dst)
        .await
        .unwrap();
    assert_eq!(rows, 5100);
    for path in [
        "/clusters",
        "/clusters/source",
        "/clusters/target",
        "/migrations",
        "/migrations/m",
    ] {
        record(&mut responses, path, server.get(path).await, StatusCode::OK);
    }
    for body in &responses {
        for secret in [&password, &wrong_password] {
            assert!(
                !body.to_string().contains(secret.as_str()),
                "a password is in a response: {body}"
            );
        }
    }

    // Stored as ciphertext, under the key the server created.
    let stored = stored_dsns(&server.data_dir).await;
    assert_eq!(stored.len(), 2);
    for value in &stored {
        assert!(
            value.starts_with("enc:v1:k1:"),
            "not encrypted: {value:.12}…"
        );
    }
    // While running (the WAL holds the recent writes) and after a stop (checkpointed).
    assert_not_in_files(&server.data_dir, &password);
    let dir = server.stop().await;
    assert_not_in_files(&dir, &password);

    // A restarted server decrypts with the kept keyring: it shows the clusters and resumes.
    let server = TestServer::start_in(&dir, test_settings()).await;
    let (status, body) = server.get("/clusters/target").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["dsn"],
        format!("postgresql://migrator@127.0.0.1:{}/postgres", target.port())
    );
    source
        .psql(
            "app",
            "UPDATE item SET note = 'after restart' WHERE id <= 10",
        )
        .await;
    let m = wait_drained(&server, "m", &src, Duration::from_secs(120)).await;
    assert!(!m.to_string().contains(&password));
    let updated: i64 = sqlx::query_scalar("SELECT count(*) FROM item WHERE note = 'after restart'")
        .fetch_one(&dst)
        .await
        .unwrap();
    assert_eq!(updated, 10);
    let dir = server.stop().await;
    assert_not_in_files(&dir, &password);
    let _ = std::fs::remove_dir_all(&dir);

    // The log holds the run (the capture works) and neither password.
    let text = log.text_from(log_from);
    assert!(
        text.contains("/api/v1/clusters"),
        "the requests are not in the captured log ({} bytes)",
        text.len()
    );
    for secret in [&password, &wrong_password] {
        if let Some(at) = text.find(secret.as_str()) {
            let line = text[..at].rsplit('\n').next().unwrap_or_default();
            panic!("a password is in the log, in a line starting: {line:.200}");
        }
    }
}
