//! Service layer: operations: long-running actions on a migration that callers start and then poll.
//! One runs per migration at a time; each records its steps in the store as they happen, optionally
//! reports them to a webhook, can be aborted, and is finished (as failed, the source unfrozen) at
//! the next start if pgshift died while it ran.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{App, ServiceError, ServiceResult};
use crate::base::TaskSet;
use crate::engine::cutover::StepRecorder;
use crate::store::{Operation, OperationState, OperationStep, StepOutcome, Store};

/// What runs on a migration as an operation: its id and kind (`cutover`, `verification`).
#[derive(Debug, Clone, Copy)]
struct Running {
    id: Uuid,
    kind: &'static str,
}

/// The operations running in this process, by migration (one at a time each), and the short
/// actions that run inside their request (a resync, a pause, a removal): while either runs, no
/// other may start on that migration. Lives in the application state.
pub struct Operations {
    tasks: TaskSet<Uuid, Running>,
    /// Short actions in progress, by migration, with what they are (`a resync of public.t`).
    /// Claiming an operation and holding for an action both happen under this lock, so that
    /// neither slips in between the other's check and its start.
    held: Mutex<HashMap<Uuid, String>>,
    /// Where operations' webhooks may be delivered.
    pub webhooks: WebhookPolicy,
}

impl Default for Operations {
    fn default() -> Self {
        Self {
            tasks: TaskSet::new("operation"),
            held: Mutex::new(HashMap::new()),
            webhooks: WebhookPolicy::default(),
        }
    }
}

/// The 409 for a migration something already runs on.
fn busy(message: String) -> ServiceError {
    ServiceError::conflict("operation_running", message)
}

/// A migration held by a short action ([`Operations::hold`]) until this is dropped.
pub(crate) struct Held<'a> {
    operations: &'a Operations,
    migration: Uuid,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.operations.held().remove(&self.migration);
    }
}

impl Operations {
    pub fn new(webhooks: WebhookPolicy) -> Self {
        Self {
            webhooks,
            ..Self::default()
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, String>> {
        self.held.lock().expect("held migrations lock")
    }

    /// Reserves the migration for a new operation of `kind`, or refuses while another operation
    /// or a short action runs on it.
    pub(crate) fn claim(
        &self,
        migration: Uuid,
        operation: Uuid,
        kind: &'static str,
    ) -> ServiceResult<CancellationToken> {
        let held = self.held();
        if let Some(what) = held.get(&migration) {
            return Err(busy(format!(
                "{what} is running on this migration; try again once it ends"
            )));
        }
        let claimed = self.tasks.reserve(
            migration,
            Running {
                id: operation,
                kind,
            },
        );
        drop(held);
        claimed.map_err(|running| {
            busy(format!(
                "a {} (operation {}) is still running on this migration; wait for it or abort it",
                running.kind, running.id
            ))
        })
    }

    /// Holds the migration for a short action that runs inside its request (`what`, e.g. `a
    /// pause`), or refuses while an operation or another such action runs on it. The migration
    /// is free again once the returned guard is dropped.
    pub(crate) fn hold(
        &self,
        migration: Uuid,
        name: &str,
        what: String,
    ) -> ServiceResult<Held<'_>> {
        let mut held = self.held();
        if let Some(other) = held.get(&migration) {
            return Err(busy(format!(
                "{other} is running on migration {name:?}; try again once it ends"
            )));
        }
        if let Some(running) = self.tasks.running(&migration) {
            return Err(busy(format!(
                "a {} (operation {}) is running on migration {name:?}: {what} is refused until it ends (wait for it, or abort it)",
                running.kind, running.id
            )));
        }
        held.insert(migration, what);
        Ok(Held {
            operations: self,
            migration,
        })
    }

    /// Runs the claimed migration's operation.
    pub(crate) fn start(&self, migration: Uuid, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.start(&migration, task);
    }

    /// Gives the migration back when its operation could not start.
    pub(crate) fn release(&self, migration: Uuid) {
        self.tasks.release(&migration);
    }

    /// Asks the migration's running operation to abort; returns its id.
    pub fn abort(&self, migration: Uuid) -> Option<Uuid> {
        self.tasks.cancel(&migration).map(|r| r.id)
    }

    /// Whether `operation` is running in this process.
    pub fn is_running(&self, operation: Uuid) -> bool {
        self.tasks.any_running(|op| op.id == operation)
    }

    /// Aborts every running operation (each restores the source) and waits up to `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.tasks.shutdown(timeout).await;
    }
}

/// Which webhook destinations the server may call: any public address, and a non-public one
/// (loopback, private, link-local, shared, unique-local, …) only inside a network the server's
/// configuration lists (`webhook_allowed_networks`). Checked on the addresses a name resolves to
/// when each request is sent, not on the host name as written.
#[derive(Clone, Debug, Default)]
pub struct WebhookPolicy {
    allowed: Arc<Vec<ipnet::IpNet>>,
}

/// Why a webhook URL is refused (said to the operator who gave it).
#[derive(Debug, thiserror::Error)]
pub enum WebhookRefused {
    #[error("webhook_url must be an http:// or https:// URL with a host")]
    Malformed,
    #[error("webhook_url's host {0} does not resolve")]
    Unresolved(String),
    #[error("webhook_url's host {0} is (or resolves to) an address outside the webhook destinations this server allows (loopback, private and link-local ranges need webhook_allowed_networks in the server's configuration)")]
    NotAllowed(String),
}

impl WebhookPolicy {
    pub fn new(allowed: Vec<ipnet::IpNet>) -> Self {
        Self {
            allowed: Arc::new(allowed),
        }
    }

    /// Whether the server may send a webhook to `ip`.
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        public_address(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Checks a webhook URL before an operation starts: its form, and every address its host
    /// resolves to now (each delivery checks the addresses again as it connects).
    pub async fn check(&self, url: &str) -> Result<(), WebhookRefused> {
        let url = reqwest::Url::parse(url).map_err(|_| WebhookRefused::Malformed)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookRefused::Malformed);
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(WebhookRefused::Malformed)?;
        let port = url.port_or_known_default().unwrap_or(80);
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<std::net::IpAddr> = match literal.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| WebhookRefused::Unresolved(host.to_string()))?
                .map(|a| a.ip())
                .collect(),
        };
        if addrs.is_empty() {
            return Err(WebhookRefused::Unresolved(host.to_string()));
        }
        if addrs.iter().all(|ip| self.permits(*ip)) {
            Ok(())
        } else {
            Err(WebhookRefused::NotAllowed(host.to_string()))
        }
    }
}

/// Whether `ip` is a public unicast address (none of the special-purpose ranges).
fn public_address(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240) // reserved
        }
        std::net::IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6.to_ipv4_mapped().is_some()
                || v6.segments()[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible
        }
    }
}

/// Resolves webhook hosts to only the addresses the policy permits (none: the delivery fails).
struct PolicyResolver(WebhookPolicy);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err("the host resolves to no allowed webhook destination".into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A webhook URL as shown (operation requests and results, logs): scheme, host and port only.
/// The path and query often are the secret (Slack-style hooks), so they go like a password.
pub fn redact_webhook_url(url: &str) -> String {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return "(not a URL)".into();
    };
    let host = parsed.host_str().unwrap_or("");
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let hidden = (parsed.path() != "/" && !parsed.path().is_empty())
        || parsed.query().is_some()
        || parsed.fragment().is_some();
    format!(
        "{}://{}{host}{port}{}",
        parsed.scheme(),
        if parsed.username().is_empty() && parsed.password().is_none() {
            ""
        } else {
            "…@"
        },
        if hidden { "/…" } else { "" }
    )
}

/// Delivers an operation's events, in order, to a webhook without holding the operation up.
/// Never follows a redirect; each event is recorded as delivered (a 2xx answer) or not, and the
/// reason for a failure goes to the log only (the answer's status would make the webhook a probe
/// of whatever it reaches).
struct Webhook {
    tx: mpsc::UnboundedSender<Value>,
    task: JoinHandle<(u32, Vec<String>)>,
    /// The URL without its path or credentials, for messages.
    shown: String,
}

impl Webhook {
    fn start(url: String, policy: WebhookPolicy) -> Self {
        let shown = redact_webhook_url(&url);
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let label = shown.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .dns_resolver(Arc::new(PolicyResolver(policy)))
                .build();
            let mut delivered = 0;
            let mut failures = Vec::new();
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("cannot build an HTTP client: {e}"));
                    return (0, failures);
                }
            };
            while let Some(event) = rx.recv().await {
                let outcome = client.post(&url).json(&event).send().await;
                let failure = match outcome {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) => Some(format!("answered {}", r.status())),
                    Err(e) => Some(e.without_url().to_string()),
                };
                match failure {
                    None => delivered += 1,
                    Some(f) => {
                        tracing::warn!(webhook = %label, event = %event["event"], error = %f, "webhook delivery failed");
                        failures.push(format!(
                            "{} {}: not delivered",
                            event["event"].as_str().unwrap_or(""),
                            event["step"].as_str().unwrap_or("")
                        ));
                    }
                }
            }
            (delivered, failures)
        });
        Self { tx, task, shown }
    }

    /// Waits (boundedly) for the queue to empty; returns a summary for the result.
    async fn close(self) -> Value {
        drop(self.tx);
        match tokio::time::timeout(Duration::from_secs(15), self.task).await {
            Ok(Ok((delivered, failures))) => {
                json!({"url": self.shown, "delivered": delivered, "failures": failures})
            }
            _ => json!({"url": self.shown, "failures": ["deliveries still pending after 15 s"]}),
        }
    }
}

/// Records an operation's progress in the store (and to its webhook) as it goes.
pub struct Recorder {
    store: Arc<dyn Store>,
    pub op: Operation,
    webhook: Option<Webhook>,
}

impl Recorder {
    /// A new running operation, stored before it starts.
    pub(crate) async fn create(
        store: Arc<dyn Store>,
        op: Operation,
        webhook: Option<(String, WebhookPolicy)>,
    ) -> ServiceResult<Self> {
        store.insert_operation(&op).await?;
        Ok(Self {
            store,
            op,
            webhook: webhook.map(|(url, policy)| Webhook::start(url, policy)),
        })
    }

    async fn save(&mut self) {
        self.op.updated_at = Utc::now();
        if let Err(e) = self.store.update_operation(&self.op).await {
            tracing::error!(operation = %self.op.id, error = %e, "cannot record operation progress");
        }
    }

    fn notify(&self, event: &str, step: Option<&OperationStep>) {
        if let Some(w) = &self.webhook {
            let _ = w.tx.send(json!({
                "event": event,
                "operation": self.op.id,
                "kind": self.op.kind,
                "migration": self.op.migration_name,
                "state": self.op.state,
                "step": step.map(|s| s.name.clone()),
                "outcome": step.map(|s| s.outcome),
                "detail": step.map(|s| s.detail.clone()),
                "at": Utc::now(),
            }));
        }
    }
}

/// The engine reports each step of a cutover or verification here.
#[async_trait::async_trait]
impl StepRecorder for Recorder {
    async fn begin(&mut self, name: &str) {
        self.op.steps.push(OperationStep {
            name: name.into(),
            outcome: StepOutcome::Running,
            started_at: Utc::now(),
            finished_at: None,
            detail: Value::Null,
        });
        self.notify("step_started", self.op.steps.last());
        self.save().await;
    }

    async fn end(&mut self, outcome: StepOutcome, detail: Value) {
        if let Some(step) = self.op.steps.last_mut() {
            step.outcome = outcome;
            step.finished_at = Some(Utc::now());
            step.detail = detail;
        }
        self.notify("step_finished", self.op.steps.last());
        self.save().await;
    }

    fn step_open(&self) -> bool {
        self.op
            .steps
            .last()
            .is_some_and(|s| s.outcome == StepOutcome::Running)
    }
}

impl Recorder {
    /// Finishes the operation; a still-running step ends as failed.
    pub async fn finish(
        &mut self,
        state: OperationState,
        result: Option<Value>,
        error: Option<String>,
    ) {
        if let Some(step) = self.op.steps.last_mut() {
            if step.outcome == StepOutcome::Running {
                step.outcome = StepOutcome::Failed;
                step.finished_at = Some(Utc::now());
            }
        }
        self.op.state = state;
        self.op.error = error;
        self.op.result = result;
        self.op.finished_at = Some(Utc::now());
        self.notify("finished", None);
        if let Some(w) = self.webhook.take() {
            let summary = w.close().await;
            let result = self.op.result.get_or_insert_with(|| json!({}));
            if let Some(obj) = result.as_object_mut() {
                obj.insert("webhook".into(), summary);
            }
        }
        self.save().await;
    }
}

/// A new operation record for `kind` on the migration.
pub(crate) fn new_operation(
    migration: &crate::store::MigrationRecord,
    kind: &str,
    requested_by: &str,
    request: Value,
) -> Operation {
    let now = Utc::now();
    Operation {
        id: Uuid::new_v4(),
        migration_id: migration.id,
        migration_name: migration.name.clone(),
        kind: kind.into(),
        state: OperationState::Running,
        requested_by: requested_by.into(),
        request,
        steps: Vec::new(),
        result: None,
        error: None,
        created_at: now,
        updated_at: now,
        finished_at: None,
    }
}

pub async fn get(app: &App, id: &str) -> ServiceResult<Operation> {
    let id =
        Uuid::parse_str(id).map_err(|_| ServiceError::NotFound(format!("operation {id:?}")))?;
    app.store
        .operation_by_id(id)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("operation {id}")))
}

/// The migration's operations, newest first.
pub async fn list(app: &App, migration: &str) -> ServiceResult<Vec<Operation>> {
    super::migrations::find(app, migration).await?;
    Ok(app.store.list_operations(migration, 100).await?)
}

/// Aborts the operation with this id (it must be running in this process).
pub async fn abort_by_id(app: &App, id: &str) -> ServiceResult<Operation> {
    let op = get(app, id).await?;
    if op.state != OperationState::Running || app.operations.abort(op.migration_id) != Some(op.id) {
        return Err(ServiceError::conflict(
            "operation_not_running",
            format!(
                "operation {} is {} and cannot be aborted",
                op.id,
                op.state.as_str()
            ),
        ));
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass_unless_listed() {
        let policy = WebhookPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!policy.permits(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            assert!(policy.permits(ip.parse().unwrap()), "{ip}");
        }
        let listed = WebhookPolicy::new(vec!["10.1.0.0/16".parse().unwrap()]);
        assert!(listed.permits("10.1.9.9".parse().unwrap()));
        assert!(listed.permits("::ffff:10.1.9.9".parse().unwrap()));
        assert!(!listed.permits("10.2.0.1".parse().unwrap()));
    }

    #[test]
    fn webhook_urls_are_shown_without_path_query_or_credentials() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T0/B0/secret",
                "https://hooks.slack.com/…",
            ),
            (
                "https://h.example:8443/x?token=s",
                "https://h.example:8443/…",
            ),
            ("https://u:pw@h.example/", "https://…@h.example"),
            ("http://h.example", "http://h.example"),
            ("not a url", "(not a URL)"),
        ] {
            assert_eq!(redact_webhook_url(url), shown, "{url}");
        }
    }
}
