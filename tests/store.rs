//! The metadata store's contract: one conformance suite run against both backends (SQLite in a
//! temporary directory, PostgreSQL in a throwaway cluster), plus `store::open`'s URL handling and a
//! full server on the PostgreSQL store.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgshift::app::Application;
use pgshift::auth::Role;
use pgshift::config::ServeConfig;
use pgshift::store::{
    self, AuditFilter, Cluster, ColumnSpec, DesiredState, Endpoint, MigrationRecord, NewAuditEntry,
    PostgresStore, SqliteStore, Store, StoreError, TableSpec, TokenRecord,
};
use pgshift::store::{Operation, OperationState, OperationStep, SchemaMode, StepOutcome};
use pgshift_tests::server::test_settings;
use pgshift_tests::{init_tracing, PgCluster};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

const PASSWORD: &str = "secretpw";

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("pgshift-store-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Now, at the microsecond: what both backends keep (PostgreSQL's timestamptz has no nanoseconds).
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

fn cluster(name: &str) -> Cluster {
    Cluster {
        id: Uuid::new_v4(),
        name: name.into(),
        dsn: format!("postgresql://migrator:{PASSWORD}@10.0.0.5:5432/{name}"),
        server_version: "15.8".into(),
        created_at: now(),
    }
}

fn table(no: i32, schema: &str, name: &str) -> TableSpec {
    TableSpec {
        no,
        schema: schema.into(),
        name: name.into(),
        key: vec!["id".into(), "Région \"x\"".into()],
        key_index: None,
        columns: vec![
            ColumnSpec {
                name: "id".into(),
                type_name: "bigint".into(),
                generated: false,
                identity_always: true,
            },
            ColumnSpec {
                name: "Région \"x\"".into(),
                type_name: "character varying(20)".into(),
                generated: false,
                identity_always: false,
            },
            ColumnSpec {
                name: "total".into(),
                type_name: "numeric(12,2)".into(),
                generated: true,
                identity_always: false,
            },
        ],
        partitioned: no % 2 == 0,
    }
}

fn migration(name: &str, source: &Cluster, target: &Cluster, patterns: bool) -> MigrationRecord {
    let at = now();
    MigrationRecord {
        id: Uuid::new_v4(),
        name: name.into(),
        source: Endpoint {
            cluster_id: source.id,
            database: "shop".into(),
        },
        target: Endpoint {
            cluster_id: target.id,
            database: "shop_new".into(),
        },
        table_patterns: patterns.then(|| vec!["public.*".into(), "Sales.\"odd\" ✓".into()]),
        tables: vec![table(1, "public", "orders"), table(2, "Sales", "odd ✓")],
        desired_state: DesiredState::Created,
        last_error: None,
        created_at: at,
        updated_at: at,
        schema_mode: SchemaMode::Create,
    }
}

#[track_caller]
fn same_cluster(got: &Cluster, want: &Cluster) {
    assert_eq!(got.id, want.id);
    assert_eq!(got.name, want.name);
    assert_eq!(got.dsn, want.dsn);
    assert_eq!(got.server_version, want.server_version);
    assert_eq!(got.created_at, want.created_at);
}

#[track_caller]
fn same_migration(got: &MigrationRecord, want: &MigrationRecord) {
    assert_eq!(got.id, want.id);
    assert_eq!(got.name, want.name);
    assert_eq!(got.source.cluster_id, want.source.cluster_id);
    assert_eq!(got.source.database, want.source.database);
    assert_eq!(got.target.cluster_id, want.target.cluster_id);
    assert_eq!(got.target.database, want.target.database);
    assert_eq!(got.table_patterns, want.table_patterns);
    assert_eq!(got.tables, want.tables);
    assert_eq!(got.desired_state, want.desired_state);
    assert_eq!(got.last_error, want.last_error);
    assert_eq!(got.created_at, want.created_at);
    assert_eq!(got.updated_at, want.updated_at);
    assert_eq!(got.schema_mode, want.schema_mode);
}

/// Everything a `Store` promises, on an empty store.
async fn conformance(store: &dyn Store) {
    store.ping().await.expect("ping");
    assert!(store.list_clusters().await.unwrap().is_empty());
    assert!(store.list_migrations().await.unwrap().is_empty());

    // Clusters: listed by name (byte order), found by name and id.
    let old = cluster("old");
    let new = cluster("new");
    let upper = cluster("Zeta");
    for c in [&old, &new, &upper] {
        store.insert_cluster(c).await.expect("insert cluster");
    }
    let listed = store.list_clusters().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["Zeta", "new", "old"]);
    same_cluster(&listed[2], &old);
    same_cluster(&store.cluster_by_name("new").await.unwrap().unwrap(), &new);
    same_cluster(&store.cluster_by_id(old.id).await.unwrap().unwrap(), &old);
    assert!(store.cluster_by_name("nope").await.unwrap().is_none());
    assert!(store.cluster_by_name("OLD").await.unwrap().is_none());
    assert!(store.cluster_by_id(Uuid::new_v4()).await.unwrap().is_none());

    // Duplicate names.
    match store.insert_cluster(&cluster("old")).await {
        Err(StoreError::Duplicate(what)) => assert!(what.contains("old"), "{what}"),
        other => panic!("duplicate cluster: {other:?}"),
    }
    assert_eq!(store.list_clusters().await.unwrap().len(), 3);

    // Migrations: tables and patterns round-trip exactly, with and without patterns.
    let shop = migration("shop", &old, &new, true);
    let all = migration("all", &new, &old, false);
    store.insert_migration(&shop).await.expect("insert shop");
    store.insert_migration(&all).await.expect("insert all");
    let listed = store.list_migrations().await.unwrap();
    assert_eq!(listed.len(), 2);
    same_migration(&listed[0], &all);
    same_migration(&listed[1], &shop);
    let got = store.migration_by_name("shop").await.unwrap().unwrap();
    same_migration(&got, &shop);
    assert_eq!(got.schema_name(), shop.schema_name());
    assert!(store.migration_by_name("nope").await.unwrap().is_none());
    match store
        .insert_migration(&migration("shop", &old, &new, false))
        .await
    {
        Err(StoreError::Duplicate(what)) => assert!(what.contains("shop"), "{what}"),
        other => panic!("duplicate migration: {other:?}"),
    }
    // A migration on a cluster that does not exist: the foreign key refuses it.
    let ghost = cluster("ghost");
    match store
        .insert_migration(&migration("ghostly", &ghost, &new, false))
        .await
    {
        Err(StoreError::Database(_)) => {}
        other => panic!("migration on a missing cluster: {other:?}"),
    }

    // Desired state and last error.
    store
        .set_desired_state(shop.id, DesiredState::Running)
        .await
        .unwrap();
    let running = store.migration_by_name("shop").await.unwrap().unwrap();
    assert_eq!(running.desired_state, DesiredState::Running);
    assert!(running.updated_at >= shop.updated_at);
    assert_eq!(running.created_at, shop.created_at);
    let message = "connection to \"old\" refused: l'hôte ne répond pas ✗";
    store.set_last_error(shop.id, Some(message)).await.unwrap();
    let failed = store.migration_by_name("shop").await.unwrap().unwrap();
    assert_eq!(failed.last_error.as_deref(), Some(message));
    assert_eq!(failed.desired_state, DesiredState::Running);
    assert!(failed.updated_at >= running.updated_at);
    store
        .set_desired_state(shop.id, DesiredState::Paused)
        .await
        .unwrap();
    store.set_last_error(shop.id, None).await.unwrap();
    let paused = store.migration_by_name("shop").await.unwrap().unwrap();
    assert_eq!(paused.desired_state, DesiredState::Paused);
    assert_eq!(paused.last_error, None);
    assert_eq!(paused.tables, shop.tables);
    // The other migration is untouched.
    same_migration(
        &store.migration_by_name("all").await.unwrap().unwrap(),
        &all,
    );

    // A cluster in use (as source or as target) cannot be deleted.
    // Each of the two is used by both migrations: either may be named.
    for id in [old.id, new.id] {
        match store.delete_cluster(id).await {
            Err(StoreError::InUse(by)) => {
                assert!(by.contains("shop") || by.contains("all"), "{by}")
            }
            other => panic!("deleting a cluster in use: {other:?}"),
        }
    }
    store.delete_migration(all.id).await.unwrap();
    match store.delete_cluster(new.id).await {
        Err(StoreError::InUse(by)) => assert!(by.contains("shop"), "{by}"),
        other => panic!("deleting a target cluster in use: {other:?}"),
    }
    assert!(store.migration_by_name("all").await.unwrap().is_none());
    assert_eq!(store.list_clusters().await.unwrap().len(), 3);

    // Once no migration uses them, clusters go.
    store.delete_migration(shop.id).await.unwrap();
    assert!(store.list_migrations().await.unwrap().is_empty());
    store.delete_cluster(old.id).await.unwrap();
    store.delete_cluster(new.id).await.unwrap();
    assert!(store.cluster_by_id(old.id).await.unwrap().is_none());
    let left: Vec<String> = store
        .list_clusters()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(left, ["Zeta"]);
    // Deleting what is not there is not an error.
    store.delete_cluster(old.id).await.unwrap();
    store.delete_migration(shop.id).await.unwrap();
    // The name is free again.
    store.insert_cluster(&cluster("old")).await.unwrap();
    store.ping().await.unwrap();

    audit_conformance(store).await;
}

fn audit_entry(
    at: DateTime<Utc>,
    kind: Option<&str>,
    name: Option<&str>,
    status: u16,
    actor: Option<&str>,
) -> NewAuditEntry {
    NewAuditEntry {
        at,
        actor: actor.unwrap_or("anonymous").into(),
        token_id: actor.map(|_| Uuid::new_v4().to_string()),
        role: actor.map(|_| "admin".into()),
        action: format!("{}.create", kind.unwrap_or("api")),
        method: "POST".into(),
        route: "/api/v1/migrations/{name}/start".into(),
        object_kind: kind.map(str::to_string),
        object_name: name.map(str::to_string),
        client_ip: actor.map(|_| "2001:db8::1".into()),
        status,
        error_code: (status >= 400).then(|| "unauthorized".into()),
    }
}

/// The audit trail: entries round-trip, newest first, filtered by object, limited.
async fn audit_conformance(store: &dyn Store) {
    let all = |limit| AuditFilter {
        limit,
        ..AuditFilter::default()
    };
    assert!(store.list_audit(&all(100)).await.unwrap().is_empty());
    let t0 = now() - chrono::Duration::seconds(10);
    let at = |s: i64| t0 + chrono::Duration::milliseconds(s * 1000 + 123);
    let entries = [
        audit_entry(at(0), Some("cluster"), Some("old"), 201, Some("ci ✓")),
        audit_entry(at(1), Some("migration"), Some("shop"), 200, Some("ops")),
        audit_entry(at(2), None, None, 401, None),
        audit_entry(at(3), Some("cluster"), Some("new"), 422, Some("ci ✓")),
        // A migration named like a cluster: filters go by kind too.
        audit_entry(at(4), Some("migration"), Some("old"), 204, Some("ops")),
        // Same instant as the previous one: the later insert lists first.
        audit_entry(at(4), Some("cluster"), Some("old"), 409, Some("ops")),
    ];
    for e in &entries {
        store.insert_audit(e).await.expect("insert audit");
    }
    let listed = store.list_audit(&all(100)).await.unwrap();
    assert_eq!(listed.len(), entries.len());
    let got: Vec<_> = listed.iter().map(|e| e.entry.clone()).collect();
    let want: Vec<_> = entries.iter().rev().cloned().collect();
    assert_eq!(got, want, "newest first, every field round-trips");
    let mut ids: Vec<i64> = listed.iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), entries.len(), "ids are distinct");

    let limited = store.list_audit(&all(2)).await.unwrap();
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[0], listed[0]);
    assert_eq!(limited[1], listed[1]);

    let clusters = store
        .list_audit(&AuditFilter {
            cluster: Some("old".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let statuses: Vec<u16> = clusters.iter().map(|e| e.entry.status).collect();
    assert_eq!(statuses, [409, 201]);
    let migrations = store
        .list_audit(&AuditFilter {
            migration: Some("old".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let statuses: Vec<u16> = migrations.iter().map(|e| e.entry.status).collect();
    assert_eq!(statuses, [204]);
    // Both: entries about either.
    let either = store
        .list_audit(&AuditFilter {
            migration: Some("shop".into()),
            cluster: Some("new".into()),
            limit: 100,
        })
        .await
        .unwrap();
    let statuses: Vec<u16> = either.iter().map(|e| e.entry.status).collect();
    assert_eq!(statuses, [422, 200]);
    let none = store
        .list_audit(&AuditFilter {
            cluster: Some("OLD".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn sqlite_store_conforms() {
    init_tracing();
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0).await.expect("open SQLite");
    conformance(&store).await;
    // store::open without a URL is the SQLite file in the data directory, data kept.
    let reopened = store::open(None, &dir.0).await.expect("store::open(None)");
    let names: Vec<String> = reopened
        .list_clusters()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["Zeta", "old"]);
    assert!(dir.0.join("pgshift.db").is_file());
}

async fn names_in(pool: &sqlx::PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = $1 ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn postgres_store_conforms() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("meta").await;
    let dir = TempDir::new();
    let store = store::open(Some(&pg.dsn("meta")), &dir.0)
        .await
        .expect("open PostgreSQL store");
    conformance(&*store).await;
    // Nothing in the data directory, everything in the schema pgshift_meta.
    assert!(!dir.0.join("pgshift.db").exists());
    let pool = pg.connect("meta").await;
    assert_eq!(
        names_in(&pool, "pgshift_meta").await,
        [
            "_sqlx_migrations",
            "app_user",
            "audit",
            "cluster",
            "migration",
            "operation",
            "token",
            "user_session"
        ]
    );
    assert!(names_in(&pool, "public").await.is_empty());
    // Opening again applies nothing and sees the same data.
    let again = PostgresStore::open(&pg.dsn("meta")).await.expect("reopen");
    let names: Vec<String> = again
        .list_clusters()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["Zeta", "old"]);
}

#[tokio::test]
async fn postgres_store_opens_concurrently_and_in_an_existing_schema() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("meta").await;
    let url = pg.dsn("meta");
    // Several instances starting together on an empty database.
    let (a, b, c) = tokio::join!(
        PostgresStore::open(&url),
        PostgresStore::open(&url),
        PostgresStore::open(&url)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let old = cluster("old");
    a.insert_cluster(&old).await.unwrap();
    same_cluster(&b.cluster_by_name("old").await.unwrap().unwrap(), &old);
    assert!(matches!(
        c.insert_cluster(&cluster("old")).await,
        Err(StoreError::Duplicate(_))
    ));
    // A role without CREATE on the database can use a schema made for it beforehand.
    pg.create_database("meta2").await;
    pg.psql(
        "meta2",
        "CREATE ROLE app LOGIN; REVOKE CREATE ON DATABASE meta2 FROM PUBLIC;
         CREATE SCHEMA pgshift_meta AUTHORIZATION app;",
    )
    .await;
    let url = format!("postgresql://app@127.0.0.1:{}/meta2", pg.port());
    let store = PostgresStore::open(&url).await.expect("open as app");
    conformance(&store).await;
}

#[tokio::test]
async fn bad_urls_fail_without_the_password() {
    init_tracing();
    let dir = TempDir::new();
    let pg = PgCluster::start().await;
    for url in [
        format!("mysql://u:{PASSWORD}@h/db"),
        format!("u:{PASSWORD}@h/db"),
        format!(
            "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/nope",
            pg.port()
        ),
        format!("postgresql://postgres:{PASSWORD}@127.0.0.1:1/db"),
        format!(
            "postgres://postgres@127.0.0.1:{}/db?password={PASSWORD}&sslmode=bogus",
            pg.port()
        ),
        format!("postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/db"),
    ] {
        let err = match store::open(Some(&url), &dir.0).await {
            Ok(_) => panic!("{url} opened"),
            Err(e) => e,
        };
        let text = format!("{err} / {err:?}");
        assert!(!text.contains(PASSWORD), "{url}: {text}");
        eprintln!("{url} -> {err}");
    }
    match store::open(Some("mysql://u:secretpw@h/db"), &dir.0).await {
        Err(StoreError::UnsupportedUrl(scheme)) => assert_eq!(scheme, "mysql"),
        Err(other) => panic!("mysql: {other:?}"),
        Ok(_) => panic!("mysql opened"),
    }
    // The server refuses to start on it, saying so without the password.
    let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.0.clone());
    config.metadata = Some(format!("mysql://u:{PASSWORD}@h/db"));
    assert!(!format!("{config:?}").contains(PASSWORD));
    let err = match Application::build(config).await {
        Ok(_) => panic!("the server started on mysql://"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("postgresql://"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}

/// Builds and runs a server on `metadata`; returns its base URL, a token and a stop handle.
async fn serve(
    data_dir: PathBuf,
    metadata: String,
) -> (
    String,
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), data_dir);
    config.metadata = Some(metadata);
    config.engine = test_settings();
    let app = Application::build(config).await.expect("pgshift builds");
    let base = format!("http://{}", app.local_addr());
    let token = app
        .issue_token(Role::Admin, Duration::from_secs(3600))
        .await
        .expect("a token for the tests");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = rx.await;
        })
        .await
        .expect("server runs");
    });
    (base, token, tx, handle)
}

async fn call(req: reqwest::RequestBuilder, token: &str) -> (reqwest::StatusCode, Value) {
    let resp = req.bearer_auth(token).send().await.expect("request");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_runs_on_the_postgres_store_shared_by_two_instances() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("meta").await;
    let client = reqwest::Client::new();
    let dir_a = TempDir::new();
    let dir_b = TempDir::new();

    let (base, token, stop, handle) = serve(dir_a.0.clone(), pg.dsn("meta")).await;
    let (status, body) = call(
        client
            .post(format!("{base}/api/v1/clusters"))
            .json(&json!({"name": "here", "dsn": pg.dsn("postgres")})),
        &token,
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let (status, body) = call(client.get(format!("{base}/readyz")), &token).await;
    assert!(status.is_success(), "readyz: {status} {body}");
    let _ = stop.send(());
    handle.await.unwrap();
    assert!(!dir_a.0.join("pgshift.db").exists());

    // A second instance, with its own data directory, sees the same clusters.
    let (base, token, stop, handle) = serve(dir_b.0.clone(), pg.dsn("meta")).await;
    let (status, body) = call(client.get(format!("{base}/api/v1/clusters")), &token).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let names: Vec<&str> = body
        .as_array()
        .or_else(|| body["clusters"].as_array())
        .unwrap_or_else(|| panic!("cluster list: {body}"))
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["here"]);
    let (status, body) = call(
        client.delete(format!("{base}/api/v1/clusters/here")),
        &token,
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT, "{body}");
    // Both instances wrote to the one audit trail.
    let (status, body) = call(
        client.get(format!("{base}/api/v1/audit?cluster=here")),
        &token,
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let actions: Vec<(&str, u64)> = body
        .as_array()
        .unwrap_or_else(|| panic!("audit list: {body}"))
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(actions, [("cluster.delete", 204), ("cluster.create", 201)]);
    let _ = stop.send(());
    handle.await.unwrap();
    let pool = pg.connect("meta").await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pgshift_meta.cluster")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// Token records: insert, list in creation order, revoke once (a second revocation keeps the
/// first time), and the revocation check the bearer check relies on.
async fn token_conformance(store: &dyn Store) {
    let first = TokenRecord {
        id: Uuid::new_v4(),
        subject: "deploy-pipeline".into(),
        role: Role::Operator,
        created_by: "cli".into(),
        created_at: now() - chrono::Duration::seconds(10),
        expires_at: now() + chrono::Duration::hours(2),
        revoked_at: None,
    };
    let second = TokenRecord {
        id: Uuid::new_v4(),
        subject: "Zoë".into(),
        role: Role::Admin,
        created_by: "admin-1".into(),
        created_at: now(),
        expires_at: now() + chrono::Duration::hours(1),
        revoked_at: None,
    };
    assert!(store.list_tokens().await.unwrap().is_empty());
    store.insert_token(&second).await.unwrap();
    store.insert_token(&first).await.unwrap();
    assert!(matches!(
        store.insert_token(&first).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(
        store.list_tokens().await.unwrap(),
        [first.clone(), second.clone()]
    );
    assert_eq!(store.token_revoked(first.id).await.unwrap(), Some(false));
    // Unknown ids are told apart (the server refuses tokens it never recorded).
    assert_eq!(store.token_revoked(Uuid::new_v4()).await.unwrap(), None);

    let at = now();
    assert!(store.revoke_token(first.id, at).await.unwrap());
    assert_eq!(store.token_revoked(first.id).await.unwrap(), Some(true));
    assert_eq!(store.token_revoked(second.id).await.unwrap(), Some(false));
    assert!(store
        .revoke_token(first.id, at + chrono::Duration::seconds(5))
        .await
        .unwrap());
    assert!(!store.revoke_token(Uuid::new_v4(), at).await.unwrap());
    let listed = store.list_tokens().await.unwrap();
    assert_eq!(listed[0].revoked_at, Some(at));
    assert_eq!(listed[1].revoked_at, None);
}

#[tokio::test]
async fn sqlite_store_keeps_tokens() {
    init_tracing();
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0).await.expect("open SQLite");
    token_conformance(&store).await;
}

#[tokio::test]
async fn postgres_store_keeps_tokens() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("meta").await;
    let store = PostgresStore::open(&pg.dsn("meta")).await.expect("open");
    token_conformance(&store).await;
}

/// Users and sessions: unique names, lookups, expiry and cascade, identical on both backends.
async fn users_conformance(store: &dyn store::Store) {
    use pgshift::store::{StoreError, User, UserSession};
    let at = |secs: i64| DateTime::from_timestamp(secs, 0).unwrap();
    assert_eq!(store.count_users().await.unwrap(), 0);
    let user = User {
        id: Uuid::new_v4(),
        name: "alice".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        role: Role::Operator,
        created_at: at(1_800_000_000),
    };
    store.insert_user(&user).await.unwrap();
    let twin = User {
        id: Uuid::new_v4(),
        ..user.clone()
    };
    assert!(matches!(
        store.insert_user(&twin).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(store.count_users().await.unwrap(), 1);
    for found in [
        store.user_by_name("alice").await.unwrap().unwrap(),
        store.user_by_id(user.id).await.unwrap().unwrap(),
    ] {
        assert_eq!(
            (
                found.id,
                &found.name,
                &found.password_hash,
                found.role,
                found.created_at
            ),
            (
                user.id,
                &user.name,
                &user.password_hash,
                user.role,
                user.created_at
            )
        );
    }
    assert!(store.user_by_name("Alice").await.unwrap().is_none());
    assert!(store.user_by_id(Uuid::new_v4()).await.unwrap().is_none());

    let session = |hash: &str, expires: i64| UserSession {
        token_hash: hash.into(),
        user_id: user.id,
        csrf_token: format!("csrf-{hash}"),
        created_at: at(1_800_000_000),
        expires_at: at(expires),
    };
    store
        .insert_session(&session("live", 1_900_000_000))
        .await
        .unwrap();
    store
        .insert_session(&session("old", 1_800_000_100))
        .await
        .unwrap();
    assert_eq!(
        store.session_by_hash("live").await.unwrap(),
        Some(session("live", 1_900_000_000))
    );
    assert!(store.session_by_hash("nope").await.unwrap().is_none());
    assert_eq!(
        store
            .delete_expired_sessions(at(1_850_000_000))
            .await
            .unwrap(),
        1
    );
    assert!(store.session_by_hash("old").await.unwrap().is_none());
    store.delete_session("live").await.unwrap();
    assert!(store.session_by_hash("live").await.unwrap().is_none());
    // Deleting an unknown session is no error.
    store.delete_session("live").await.unwrap();

    // Updating or removing a user ends their sessions in the same step.
    let bob = User {
        id: Uuid::new_v4(),
        name: "bob".into(),
        ..user.clone()
    };
    store.insert_user(&bob).await.unwrap();
    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    store
        .insert_session(&session("alice-1", 1_900_000_000))
        .await
        .unwrap();
    let bobs = UserSession {
        user_id: bob.id,
        ..session("bob-1", 1_900_000_000)
    };
    store.insert_session(&bobs).await.unwrap();
    let changed = User {
        role: Role::Viewer,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$bmV3".into(),
        ..user.clone()
    };
    assert!(store.update_user(&changed).await.unwrap());
    let found = store.user_by_id(user.id).await.unwrap().unwrap();
    assert_eq!(
        (found.role, found.password_hash),
        (changed.role, changed.password_hash)
    );
    assert!(store.session_by_hash("alice-1").await.unwrap().is_none());
    assert!(store.session_by_hash("bob-1").await.unwrap().is_some());
    assert!(store.delete_user(bob.id).await.unwrap());
    assert!(store.session_by_hash("bob-1").await.unwrap().is_none());
    assert!(store.user_by_name("bob").await.unwrap().is_none());
    assert!(!store.delete_user(bob.id).await.unwrap());
    assert!(!store
        .update_user(&User {
            id: Uuid::new_v4(),
            ..user.clone()
        })
        .await
        .unwrap());
}

#[tokio::test]
async fn sqlite_store_keeps_users_and_sessions() {
    init_tracing();
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0).await.expect("open SQLite");
    users_conformance(&store).await;
}

#[tokio::test]
async fn postgres_store_keeps_users_and_sessions() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("meta").await;
    let dir = TempDir::new();
    let store = store::open(Some(&pg.dsn("meta")), &dir.0)
        .await
        .expect("open PostgreSQL store");
    users_conformance(&*store).await;
}

fn operation(migration: &MigrationRecord) -> Operation {
    Operation {
        id: Uuid::new_v4(),
        migration_id: migration.id,
        migration_name: migration.name.clone(),
        kind: "cutover".into(),
        state: OperationState::Running,
        requested_by: "ops".into(),
        request: json!({"dry_run": false}),
        steps: Vec::new(),
        result: None,
        error: None,
        created_at: now(),
        updated_at: now(),
        finished_at: None,
    }
}

/// Operations: stored, updated step by step, listed newest first per migration, found while
/// running, and kept after their migration is removed.
async fn operation_conformance(store: &dyn Store) {
    let (a, b) = (cluster("op-a"), cluster("op-b"));
    store.insert_cluster(&a).await.unwrap();
    store.insert_cluster(&b).await.unwrap();
    let m = migration("op-shop", &a, &b, false);
    store.insert_migration(&m).await.unwrap();
    let mut first = operation(&m);
    store.insert_operation(&first).await.unwrap();
    assert_eq!(
        store.operation_by_id(first.id).await.unwrap().as_ref(),
        Some(&first)
    );
    let mut second = operation(&m);
    second.kind = "verify".into();
    second.created_at = first.created_at + chrono::Duration::seconds(1);
    store.insert_operation(&second).await.unwrap();
    assert_eq!(store.running_operations().await.unwrap().len(), 2);

    first.steps.push(OperationStep {
        name: "preflight".into(),
        outcome: StepOutcome::Succeeded,
        started_at: now(),
        finished_at: Some(now()),
        detail: json!({"gates": [{"name": "lag", "passed": true}]}),
    });
    first.state = OperationState::Failed;
    first.error = Some("gate failed".into());
    first.result = Some(json!({"writes_blocked_seconds": 0.25}));
    first.updated_at = now();
    first.finished_at = Some(now());
    store.update_operation(&first).await.unwrap();
    assert_eq!(
        store.operation_by_id(first.id).await.unwrap().as_ref(),
        Some(&first)
    );
    let running = store.running_operations().await.unwrap();
    assert_eq!(
        running.iter().map(|o| o.id).collect::<Vec<_>>(),
        [second.id]
    );

    let listed = store.list_operations("op-shop", 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|o| o.id).collect::<Vec<_>>(),
        [second.id, first.id]
    );
    assert_eq!(store.list_operations("op-shop", 1).await.unwrap().len(), 1);
    assert!(store.list_operations("other", 10).await.unwrap().is_empty());
    assert!(store
        .operation_by_id(Uuid::new_v4())
        .await
        .unwrap()
        .is_none());

    store.delete_migration(m.id).await.unwrap();
    assert_eq!(store.list_operations("op-shop", 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn sqlite_store_keeps_operations() {
    init_tracing();
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0).await.expect("open SQLite");
    operation_conformance(&store).await;
}

#[tokio::test]
async fn postgres_store_keeps_operations() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("meta").await;
    let dir = TempDir::new();
    let store = store::open(Some(&pg.dsn("meta")), &dir.0)
        .await
        .expect("open PostgreSQL store");
    operation_conformance(&*store).await;
}

/// A migration cut over is stored and read back as such by both backends.
async fn cut_over_state_conformance(store: &dyn Store) {
    let (a, b) = (cluster("co-a"), cluster("co-b"));
    store.insert_cluster(&a).await.unwrap();
    store.insert_cluster(&b).await.unwrap();
    let m = migration("co-shop", &a, &b, false);
    store.insert_migration(&m).await.unwrap();
    store
        .set_desired_state(m.id, DesiredState::CutOver)
        .await
        .unwrap();
    let got = store.migration_by_name("co-shop").await.unwrap().unwrap();
    assert_eq!(got.desired_state, DesiredState::CutOver);
}

#[tokio::test]
async fn sqlite_store_keeps_cut_over_state() {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.0).await.expect("open SQLite");
    cut_over_state_conformance(&store).await;
}
