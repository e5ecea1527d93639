//! pgshift as a user runs it: the `pgshift serve` binary in its own process (so its memory and
//! CPU are its own), with its default engine settings, driven through the REST API with an
//! admin token from `pgshift token create`. Into an empty target database the migration is
//! made with `"schema": "create"` (pgshift builds the tables, copies, then builds the rest);
//! into a target whose schema was loaded beforehand, with `"schema": "existing"`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{Cutover, Pair};
use crate::common::{Ctx, R};
use crate::procs;

const MIGRATION: &str = "bench";

pub struct Pgshift {
    child: Option<Child>,
    base: String,
    token: String,
    client: reqwest::Client,
    dir: PathBuf,
    /// `"create"` or `"existing"`, as the migration was made.
    pub schema: &'static str,
    /// When a poll first saw every table copied (`catching_up` or `synced`).
    pub copied_at: Mutex<Option<Instant>>,
    /// Every object a poll saw in a table's `objects_pending` (schema `create`).
    pub objects_seen: Mutex<BTreeSet<String>>,
}

/// The pgshift binary: `PGSHIFT_BIN` (set by tests/bench/run), else next to this benchmark's.
fn binary() -> PathBuf {
    std::env::var_os("PGSHIFT_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.join("pgshift"))
        })
        .unwrap_or_else(|| PathBuf::from("pgshift"))
}

fn free_port() -> R<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").ctx(|| "finding a free port".into())?;
    Ok(l.local_addr().ctx(|| "finding a free port".into())?.port())
}

impl Pgshift {
    pub async fn start(pair: &Pair) -> R<Pgshift> {
        let dir = pair.work.join("pgshift");
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let bin = binary();
        if !bin.is_file() {
            return Err(format!(
                "no pgshift binary at {} (tests/bench/run builds it; or set PGSHIFT_BIN)",
                bin.display()
            ));
        }
        let port = free_port()?;
        let log_path = dir.join("server.log");
        let log =
            std::fs::File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
        let log2 = log.try_clone().ctx(|| "cloning a file handle".into())?;
        let child = Command::new(&bin)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .env_remove("PGSHIFT_CONFIG")
            .env_remove("PGSHIFT_METADATA")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .ctx(|| format!("starting {}", bin.display()))?;
        let mut t = Pgshift {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            token: String::new(),
            client: reqwest::Client::new(),
            dir,
            schema: if pair.schema_loaded.is_some() {
                "existing"
            } else {
                "create"
            },
            copied_at: Mutex::new(None),
            objects_seen: Mutex::new(BTreeSet::new()),
        };
        t.wait_healthy().await?;
        let mut token = Command::new(&bin);
        token
            .args(["token", "create", "--role", "admin", "--data-dir"])
            .arg(t.dir.join("data"));
        t.token = crate::common::run(token).await?.trim().to_string();

        for (name, port) in [("source", pair.source_port), ("target", pair.target_port)] {
            let dsn = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
            t.call(
                "POST",
                "/clusters",
                Some(json!({"name": name, "dsn": dsn})),
                StatusCode::CREATED,
            )
            .await?;
        }
        t.call(
            "POST",
            "/migrations",
            Some(json!({
                "name": MIGRATION,
                "source": {"cluster": "source", "database": pair.db},
                "target": {"cluster": "target", "database": pair.db},
                "schema": t.schema,
            })),
            StatusCode::CREATED,
        )
        .await?;
        t.call(
            "POST",
            &format!("/migrations/{MIGRATION}/start"),
            Some(json!({})),
            StatusCode::OK,
        )
        .await?;
        Ok(t)
    }

    async fn wait_healthy(&mut self) -> R<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self
                .client
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "pgshift serve exited ({status}); {}",
                        self.log_hint()
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "pgshift serve did not answer /healthz within 30 s; {}",
                    self.log_hint()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        want: StatusCode,
    ) -> R<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let req = match method {
            "POST" => self.client.post(&url),
            "DELETE" => self.client.delete(&url),
            _ => self.client.get(&url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .ctx(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status != want {
            return Err(format!("{method} {path} answered {status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The migration is `synced` (every table copied and caught up) and no table has an
    /// object still to build (`objects_pending` empty: schema `create` builds secondary objects
    /// after each table's copy). An `error` state is retried by pgshift, so it is only reported
    /// when the wait times out; an object that failed to build is an error at once.
    pub async fn copy_done(&self) -> R<bool> {
        let m = self
            .call(
                "GET",
                &format!("/migrations/{MIGRATION}"),
                None,
                StatusCode::OK,
            )
            .await?;
        let tables = m["tables"]
            .as_array()
            .ok_or_else(|| format!("the migration has no tables: {m}"))?;
        let failed: Vec<String> = tables
            .iter()
            .flat_map(|t| t["objects_failed"].as_array().cloned().unwrap_or_default())
            .map(|f| f.to_string())
            .collect();
        if !failed.is_empty() {
            return Err(format!("pgshift could not build: {}", failed.join("; ")));
        }
        let mut pending = 0;
        {
            let mut seen = self.objects_seen.lock().expect("objects_seen");
            for t in tables {
                for o in t["objects_pending"].as_array().into_iter().flatten() {
                    pending += 1;
                    seen.insert(o.as_str().unwrap_or_default().to_string());
                }
            }
        }
        let copied = !tables.is_empty()
            && tables
                .iter()
                .all(|t| t["state"] == "catching_up" || t["state"] == "synced");
        if copied {
            self.copied_at
                .lock()
                .expect("copied_at")
                .get_or_insert_with(Instant::now);
        }
        Ok(m["state"] == "synced" && pending == 0)
    }

    pub fn processes(&self) -> Vec<u32> {
        self.child.as_ref().map(|c| c.id()).into_iter().collect()
    }

    /// pgshift's own cutover: `POST /migrations/bench/cutover`, then the operation is polled
    /// until it ends. pgshift freezes the source itself (the scenario does not lock for it), so
    /// the writes-blocked figure is the one pgshift measures from its freeze to its finish; the
    /// steps are the operation's own, as recorded by the server.
    pub async fn cutover(&mut self, _pair: &Pair) -> R<Option<Cutover>> {
        let op = self
            .call(
                "POST",
                &format!("/migrations/{MIGRATION}/cutover"),
                Some(json!({"max_lag_seconds": 5})),
                StatusCode::ACCEPTED,
            )
            .await?;
        let id = op["id"]
            .as_str()
            .ok_or_else(|| format!("the cutover answered without an operation id: {op}"))?
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(300);
        let op = loop {
            let op = self
                .call("GET", &format!("/operations/{id}"), None, StatusCode::OK)
                .await?;
            if op["state"] != "running" {
                break op;
            }
            if Instant::now() > deadline {
                return Err(format!("the cutover still runs after 300 s: {op}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if op["state"] != "succeeded" {
            return Err(format!(
                "the cutover ended {}: {}",
                op["state"],
                op["error"].as_str().unwrap_or("no error recorded")
            ));
        }
        let blocked = op["result"]["writes_blocked_seconds"]
            .as_f64()
            .ok_or_else(|| format!("the cutover's result has no writes_blocked_seconds: {op}"))?;
        let time = |v: &Value| {
            v.as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        let steps = op["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let took = time(&s["finished_at"])? - time(&s["started_at"])?;
                Some((
                    s["name"].as_str()?.to_string(),
                    took.to_std().unwrap_or_default(),
                ))
            })
            .collect();
        Ok(Some(Cutover {
            steps,
            procedure: "`POST /api/v1/migrations/{name}/cutover`: preflight gates, freeze (locks and a \
                        blocking trigger per table), drain the last tick, sequences, verify counts, finish; \
                        writes blocked = pgshift's own figure, freeze start to finish"
                .into(),
            writes_blocked: Some(Duration::from_secs_f64(blocked)),
        }))
    }

    /// DELETE the migration (drops pgshift's schemas on both sides), then SIGTERM the server.
    pub async fn stop(mut self) -> R<()> {
        let deleted = self
            .call(
                "DELETE",
                &format!("/migrations/{MIGRATION}"),
                None,
                StatusCode::NO_CONTENT,
            )
            .await;
        let stopped = self.stop_server().await;
        deleted.map(|_| ()).and(stopped)
    }

    async fn stop_server(&mut self) -> R<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        procs::signal(child.id(), "TERM");
        let killed = procs::wait_gone(&[child.id()], Duration::from_secs(30)).await;
        let _ = child.wait();
        if killed.is_empty() {
            Ok(())
        } else {
            Err("pgshift serve did not stop within 30 s of SIGTERM and was killed".into())
        }
    }

    pub fn log_hint(&self) -> String {
        format!("pgshift's log: {}", self.dir.join("server.log").display())
    }
}

impl Drop for Pgshift {
    /// An interrupted run leaves no server behind.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
