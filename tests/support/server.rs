//! A pgshift server for tests: the real `Application`, on a free port, in its own runtime on its
//! own thread, so a test can stop it cleanly or "crash" it (drop every task at once, as kill -9
//! would) and start it again on the same data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgshift::app::Application;
use pgshift::auth::Role;
use pgshift::config::ServeConfig;
use pgshift::engine::{EngineSettings, TickerSettings};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Engine settings that exercise chunking and queue rotation on test-sized data.
pub fn test_settings() -> EngineSettings {
    EngineSettings {
        ticker: TickerSettings {
            busy_interval: Duration::from_millis(100),
            idle_interval: Duration::from_millis(500),
            rotation_interval: Duration::from_secs(2),
        },
        copy_chunk_rows: 2_000,
        copy_parallelism: 2,
        fetch_events: 1_000,
        batch_max_events: 20_000,
        max_backoff: Duration::from_secs(2),
        // Generous on a shared, noisy machine; the tests of the bound set their own.
        verify_hold: Duration::from_secs(30),
        ..EngineSettings::default()
    }
}

pub struct TestServer {
    pub base: String,
    pub token: String,
    pub client: reqwest::Client,
    pub data_dir: PathBuf,
    owns_dir: bool,
    shutdown: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// A server with a fresh data directory and test settings.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("pgshift-server-{}", uuid::Uuid::new_v4()));
        let mut s = Self::start_in(&dir, test_settings()).await;
        s.owns_dir = true;
        s
    }

    /// A server with a fresh data directory, test settings, and `configure` applied to its
    /// configuration.
    pub async fn start_configured(configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = std::env::temp_dir().join(format!("pgshift-server-{}", uuid::Uuid::new_v4()));
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.clone());
        config.engine = test_settings();
        configure(&mut config);
        let mut s = Self::start_with(config).await;
        s.owns_dir = true;
        s
    }

    /// A server on `data_dir` (which may hold an earlier server's state).
    pub async fn start_in(data_dir: &Path, engine: EngineSettings) -> Self {
        let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), data_dir.to_path_buf());
        config.engine = engine;
        Self::start_with(config).await
    }

    async fn start_with(config: ServeConfig) -> Self {
        let data_dir = config.data_dir.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let (ready_tx, ready_rx) = oneshot::channel::<(String, String)>();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = runtime.handle().clone();
        // Built and run on the server's own thread: a runtime cannot be entered from a test's.
        let thread = std::thread::spawn(move || {
            handle.block_on(async move {
                let app = Application::build(config).await.expect("pgshift builds");
                let base = format!("http://{}", app.local_addr());
                let token = app
                    .issue_token(Role::Admin, Duration::from_secs(3600))
                    .await
                    .expect("a token for the tests");
                let _ = ready_tx.send((base, token));
                app.run_until_stopped(async {
                    let _ = rx.await;
                })
                .await
                .expect("server runs");
            });
        });
        let (base, token) = ready_rx.await.expect("the server started");
        Self {
            base,
            token,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            data_dir,
            owns_dir: false,
            shutdown: Some(tx),
            runtime: Some(runtime),
            thread: Some(thread),
        }
    }

    /// Graceful stop: the same path as SIGTERM.
    pub async fn stop(mut self) -> PathBuf {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let thread = self.thread.take();
        tokio::task::spawn_blocking(move || {
            if let Some(t) = thread {
                t.join().expect("server thread");
            }
        })
        .await
        .unwrap();
        self.owns_dir = false;
        self.data_dir.clone()
    }

    /// Drops every task of the server at once, without any shutdown step (like kill -9).
    pub fn crash(mut self) -> PathBuf {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        self.shutdown.take();
        self.owns_dir = false;
        self.data_dir.clone()
    }

    /// A new token with `role` for `subject`, issued and recorded beside the server (as
    /// `pgshift token create` does: nothing in the audit trail).
    pub async fn token_for(&self, role: Role, subject: &str) -> String {
        let store = pgshift::store::open(None, &self.data_dir)
            .await
            .expect("the test server's store opens");
        let keys = pgshift::auth::Keys::load_or_create(&self.data_dir).expect("the server's key");
        let new = pgshift::service::tokens::NewToken {
            role,
            subject: subject.into(),
            ttl_hours: Some(1),
        };
        pgshift::service::tokens::issue(store.as_ref(), &keys, new, "tests")
            .await
            .expect("a recorded token")
            .token
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.base, path)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request reaches the server");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.delete(self.url(path))).await
    }

    /// Registers a cluster, panicking unless it is created.
    pub async fn add_cluster(&self, name: &str, dsn: &str) {
        let (status, body) = self
            .post("/clusters", json!({"name": name, "dsn": dsn}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "adding cluster {name}: {body}");
    }

    /// Creates and starts a migration between `source` and `target` (database names) on the
    /// clusters registered as "source" and "target".
    pub async fn create_and_start(
        &self,
        name: &str,
        source_db: &str,
        target_db: &str,
        tables: Option<Vec<&str>>,
    ) {
        let mut body = json!({
            "name": name,
            "source": {"cluster": "source", "database": source_db},
            "target": {"cluster": "target", "database": target_db},
        });
        if let Some(t) = tables {
            body["tables"] = json!(t);
        }
        let (status, body) = self.post("/migrations", body).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "creating migration {name}: {body}"
        );
        let (status, body) = self
            .post(&format!("/migrations/{name}/start"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "starting migration {name}: {body}");
    }

    pub async fn migration(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/migrations/{name}")).await;
        assert_eq!(status, StatusCode::OK, "reading migration {name}: {body}");
        body
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}
