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
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::webhooks::Webhook;
pub use super::webhooks::{redact_webhook_url, WebhookPolicy, WebhookRefused};
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
