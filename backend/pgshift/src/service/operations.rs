//! Service layer: operations: long-running actions on a migration that callers start and then poll.
//! One runs per migration at a time; each records its steps in the store as they happen, optionally
//! reports them to a webhook, can be aborted, and is finished (as failed, the source unfrozen) at
//! the next start if pgshift died while it ran.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{App, ServiceError, ServiceResult};
use crate::base::TaskSet;
use crate::engine::cutover::{self, StepRecorder};
use crate::store::{DesiredState, Operation, OperationState, OperationStep, StepOutcome, Store};

/// The operations running in this process, by migration (one at a time each), with the id of
/// the operation as the task's value. Lives in the application state.
pub struct Operations {
    tasks: TaskSet<Uuid, Uuid>,
}

impl Default for Operations {
    fn default() -> Self {
        Self {
            tasks: TaskSet::new("operation"),
        }
    }
}

impl Operations {
    /// Reserves the migration for a new operation, or refuses while another one runs.
    pub(crate) fn claim(
        &self,
        migration: Uuid,
        operation: Uuid,
    ) -> ServiceResult<CancellationToken> {
        self.tasks.reserve(migration, operation).map_err(|running| {
            ServiceError::conflict(
                "operation_running",
                format!(
                    "operation {running} is still running on this migration; wait for it or abort it"
                ),
            )
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
        self.tasks.cancel(&migration)
    }

    /// Whether an operation (a cutover, a verification) runs on this migration in this process.
    pub fn migration_busy(&self, migration: Uuid) -> bool {
        self.tasks.is_running(&migration)
    }

    /// Whether `operation` is running in this process.
    pub fn is_running(&self, operation: Uuid) -> bool {
        self.tasks.any_running(|op| *op == operation)
    }

    /// Aborts every running operation (each restores the source) and waits up to `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.tasks.shutdown(timeout).await;
    }
}

/// Delivers an operation's events, in order, to a webhook without holding the operation up.
struct Webhook {
    tx: mpsc::UnboundedSender<Value>,
    task: JoinHandle<(u32, Vec<String>)>,
    /// The URL without credentials, for messages.
    shown: String,
}

impl Webhook {
    fn start(url: String) -> Self {
        let shown = crate::base::redact_url(&url);
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let label = shown.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
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
                    Ok(r) => Some(format!("{label} answered {}", r.status())),
                    Err(e) => Some(format!("{label}: {}", e.without_url())),
                };
                match failure {
                    None => delivered += 1,
                    Some(f) => {
                        tracing::warn!(webhook = %label, event = %event["event"], error = %f, "webhook delivery failed");
                        failures.push(format!(
                            "{} {}: {f}",
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
        webhook_url: Option<String>,
    ) -> ServiceResult<Self> {
        store.insert_operation(&op).await?;
        Ok(Self {
            store,
            op,
            webhook: webhook_url.map(Webhook::start),
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

/// At server start: finishes every operation a crash left running. A cutover that had frozen
/// the source gets its freeze lifted first (unless the migration was already cut over): nothing
/// stays frozen because pgshift died.
pub async fn recover(app: &App) -> ServiceResult<()> {
    let migrations = app.store.list_migrations().await?;
    for mut op in app.store.running_operations().await? {
        let record = migrations.iter().find(|m| m.id == op.migration_id);
        let mut note = String::from("pgshift stopped while this operation ran");
        if let Some(record) = record {
            if op.kind == "cutover" && record.desired_state != DesiredState::CutOver {
                match unfreeze_source(app, record).await {
                    Ok(true) => note.push_str("; the source's freeze was lifted at restart"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(operation = %op.id, error = %e, "cannot lift a freeze left by a crash; retrying at next start");
                        continue;
                    }
                }
            }
        }
        tracing::warn!(operation = %op.id, migration = %op.migration_name, "finishing an operation left running by a crash");
        let now = Utc::now();
        for step in op
            .steps
            .iter_mut()
            .filter(|s| s.outcome == StepOutcome::Running)
        {
            step.outcome = StepOutcome::Failed;
            step.finished_at = Some(now);
        }
        op.state = OperationState::Failed;
        op.error = Some(note);
        op.updated_at = now;
        op.finished_at = Some(now);
        app.store.update_operation(&op).await?;
    }
    Ok(())
}

async fn unfreeze_source(
    app: &App,
    record: &crate::store::MigrationRecord,
) -> crate::engine::EngineResult<bool> {
    cutover::sequence::lift_freeze(&app.supervisor, record).await
}
