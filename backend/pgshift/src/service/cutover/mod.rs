//! The cutover and verification on demand, run as operations: validated here, then carried out
//! step by step in a task that records each step, and that restores source writes on any failure
//! or abort before the finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod content;
mod on_demand;

pub use on_demand::{start_verify, VerifyRequest};

use super::migrations::find;
use super::operations::{new_operation, Recorder};
use super::{check_name, App, ServiceError, ServiceResult};
use crate::engine::cutover::{drain, freeze, gates, reverse, sequences};
use crate::engine::{pg, EngineError, EngineResult};
use crate::store::{DesiredState, MigrationRecord, Operation, OperationState, StepOutcome};

/// `POST /api/v1/migrations/{name}/cutover`
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CutoverRequest {
    /// Run the gates only.
    pub dry_run: Option<bool>,
    /// Lag threshold of the gate (default 5 s).
    pub max_lag_seconds: Option<f64>,
    /// Longest wait for the freeze's locks and for the drain (default 30 s); then it aborts.
    pub timeout_seconds: Option<f64>,
    /// Compare the content of every table (default): checksums over every column each side
    /// has now, in key ranges before the freeze and, inside it, of the rows written since.
    /// `false` compares row counts only.
    pub checksums: Option<bool>,
    /// Arm replication from the new server back to the old one before writes resume.
    pub reverse: Option<bool>,
    /// Name of the reverse migration (default `<name>-reverse`).
    pub reverse_name: Option<String>,
    /// Receives each step as JSON (POST).
    pub webhook_url: Option<String>,
}

fn seconds(what: &str, value: Option<f64>, default: f64) -> ServiceResult<f64> {
    let v = value.unwrap_or(default);
    if !(v > 0.0 && v <= 3600.0) {
        return Err(ServiceError::invalid(
            "invalid_body",
            format!("{what} must be more than 0 and at most 3600"),
        ));
    }
    Ok(v)
}

fn check_webhook(url: &str) -> ServiceResult<()> {
    let ok = reqwest::Url::parse(url)
        .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "invalid_webhook_url",
            "webhook_url must be an http:// or https:// URL",
        ))
    }
}

pub(super) fn require_running(record: &MigrationRecord) -> ServiceResult<()> {
    match record.desired_state {
        DesiredState::Running => Ok(()),
        DesiredState::CutOver => Err(ServiceError::conflict(
            "cut_over",
            format!("migration {:?} has already been cut over", record.name),
        )),
        _ => Err(ServiceError::conflict(
            "not_running",
            format!(
                "migration {:?} is not running; start or resume it first",
                record.name
            ),
        )),
    }
}

/// Starts a cutover operation and returns it (running).
pub async fn start_cutover(
    app: &Arc<App>,
    name: &str,
    req: CutoverRequest,
    requested_by: &str,
) -> ServiceResult<Operation> {
    let record = find(app, name).await?;
    require_running(&record)?;
    let max_lag = seconds("max_lag_seconds", req.max_lag_seconds, 5.0)?;
    let timeout = seconds("timeout_seconds", req.timeout_seconds, 30.0)?;
    if let Some(url) = &req.webhook_url {
        check_webhook(url)?;
    }
    let reverse_name = if req.reverse.unwrap_or(false) {
        let n = req
            .reverse_name
            .clone()
            .unwrap_or_else(|| format!("{name}-reverse"));
        check_name("reverse migration", &n)?;
        if app.store.migration_by_name(&n).await?.is_some() {
            return Err(ServiceError::conflict(
                "duplicate_name",
                format!("migration {n:?} already exists; pick another reverse_name"),
            ));
        }
        Some(n)
    } else {
        None
    };
    let shown = json!({
        "dry_run": req.dry_run.unwrap_or(false),
        "max_lag_seconds": max_lag,
        "timeout_seconds": timeout,
        "checksums": req.checksums.unwrap_or(true),
        "reverse": reverse_name.is_some(),
        "reverse_name": reverse_name,
        "webhook_url": req.webhook_url.as_deref().map(crate::base::redact_url),
    });
    let op = new_operation(&record, "cutover", requested_by, shown);
    let cancel = app.operations.claim(record.id, op.id)?;
    let mut recorder = match Recorder::create(app.store.clone(), op, req.webhook_url.clone()).await
    {
        Ok(r) => r,
        Err(e) => {
            app.operations.release(record.id);
            return Err(e);
        }
    };
    let snapshot = recorder.op.clone();
    let settings = CutoverSettings {
        dry_run: req.dry_run.unwrap_or(false),
        max_lag,
        timeout: Duration::from_secs_f64(timeout),
        checksums: req.checksums.unwrap_or(true),
        reverse_name,
    };
    let task_app = app.clone();
    let id = record.id;
    let join = tokio::spawn(async move {
        let mut cutover = Cutover {
            app: &task_app,
            record,
            settings,
            cancel,
            reverse: None,
        };
        cutover.run(&mut recorder).await;
    });
    app.operations.attach(id, join);
    Ok(snapshot)
}

/// Aborts the migration's running operation.
pub async fn abort(app: &App, name: &str) -> ServiceResult<Operation> {
    let record = find(app, name).await?;
    let Some(id) = app.operations.abort(record.id) else {
        return Err(ServiceError::conflict(
            "operation_not_running",
            format!("no operation is running on migration {name:?}"),
        ));
    };
    super::operations::get(app, &id.to_string()).await
}

struct CutoverSettings {
    dry_run: bool,
    max_lag: f64,
    timeout: Duration,
    checksums: bool,
    reverse_name: Option<String>,
}

struct Cutover<'a> {
    app: &'a App,
    record: MigrationRecord,
    settings: CutoverSettings,
    cancel: CancellationToken,
    /// The reverse migration once armed (before the freeze); removed again if the cutover stops.
    reverse: Option<MigrationRecord>,
}

/// Why the cutover stopped before its finish.
enum Stop {
    Gates(String),
    Failed(EngineError),
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        Stop::Failed(e)
    }
}

impl Cutover<'_> {
    async fn run(&mut self, rec: &mut Recorder) {
        let mut frozen = false;
        let mut result = json!({});
        let outcome = self.steps(rec, &mut frozen, &mut result).await;
        match outcome {
            Ok(()) => {
                rec.finish(OperationState::Succeeded, Some(result), None)
                    .await
            }
            Err(stop) => {
                let (state, error) = match stop {
                    Stop::Gates(reason) => (OperationState::Failed, reason),
                    Stop::Failed(EngineError::Cancelled) => (
                        OperationState::Aborted,
                        "aborted on request; source writes restored".to_string(),
                    ),
                    Stop::Failed(e) => {
                        // The record says what callers may read; the log keeps the detail.
                        tracing::warn!(migration = %self.record.name, error = %e, "cutover failed");
                        (OperationState::Failed, e.shown())
                    }
                };
                if rec
                    .op
                    .steps
                    .last()
                    .is_some_and(|s| s.outcome == StepOutcome::Running)
                {
                    rec.end(StepOutcome::Failed, json!({"error": error})).await;
                }
                if frozen {
                    rec.begin("restore").await;
                    match self.restore().await {
                        Ok(()) => {
                            rec.end(StepOutcome::Succeeded, json!({"source_writable": true}))
                                .await
                        }
                        Err(e) => {
                            tracing::error!(migration = %self.record.name, error = %e, "cannot lift the freeze after a failed cutover");
                            rec.end(StepOutcome::Failed, json!({"error": e.shown()}))
                                .await
                        }
                    }
                }
                if let Some(r) = self.reverse.take() {
                    if let Err(e) = self.remove_reverse(&r).await {
                        tracing::error!(migration = %r.name, error = %e, "cannot remove the reverse migration of a stopped cutover");
                    }
                }
                tracing::warn!(migration = %self.record.name, %error, "cutover stopped");
                rec.finish(state, Some(result), Some(error)).await;
            }
        }
    }

    fn check_cancel(&self) -> Result<(), Stop> {
        if self.cancel.is_cancelled() {
            Err(Stop::Failed(EngineError::Cancelled))
        } else {
            Ok(())
        }
    }

    async fn connect(&self) -> EngineResult<(PgConnection, PgConnection)> {
        let (source, target) = self.app.supervisor.endpoints(&self.record).await?;
        let src = pg::connect("the source", &source).await?;
        let dst = pg::connect("the target", &target).await?;
        Ok((src, dst))
    }

    /// Lifts the freeze; the migration's run never stopped, so replication goes on as before.
    async fn restore(&self) -> EngineResult<()> {
        let (mut src, _) = self.connect().await?;
        freeze::unfreeze(&mut src, &self.record.schema_name()).await?;
        Ok(())
    }

    async fn message(&self) -> EngineResult<String> {
        let (_, target) = self.app.supervisor.endpoints(&self.record).await?;
        let cluster = self
            .app
            .store
            .cluster_by_id(self.record.target.cluster_id)
            .await?
            .map(|c| c.name)
            .unwrap_or_default();
        Ok(freeze::message(
            &self.record.name,
            &cluster,
            target.get_host(),
            target.get_port(),
            &self.record.target.database,
        ))
    }

    async fn steps(
        &mut self,
        rec: &mut Recorder,
        frozen: &mut bool,
        result: &mut Value,
    ) -> Result<(), Stop> {
        let schema = self.record.schema_name();
        let tables = self.record.tables.clone();

        rec.begin("preflight").await;
        let (mut src, mut dst) = self.connect().await?;
        let status = self.app.supervisor.status(self.record.id);
        let checked = gates::check(
            &mut src,
            &mut dst,
            &gates::GateInput {
                tables: &tables,
                status: status.as_ref(),
                max_lag_seconds: self.settings.max_lag,
                long_transaction_seconds: self.settings.max_lag.max(1.0),
                reverse: self.settings.reverse_name.is_some(),
                foreign_key_rows: true,
            },
        )
        .await?;
        let failed: Vec<String> = checked
            .iter()
            .filter(|g| !g.passed)
            .map(|g| format!("{}: {}", g.name, g.reason))
            .collect();
        result["gates"] = json!(checked);
        if !failed.is_empty() {
            rec.end(StepOutcome::Failed, json!({"gates": checked}))
                .await;
            return Err(Stop::Gates(format!(
                "preflight gate failed: {}",
                failed.join("; ")
            )));
        }
        rec.end(StepOutcome::Succeeded, json!({"gates": checked}))
            .await;
        if self.settings.dry_run {
            result["dry_run"] = true.into();
            return Ok(());
        }
        self.check_cancel()?;

        // Every row is compared while writes still go on; inside the freeze only what changed
        // since is compared again (or, with checksums: false, the row counts).
        let mut verifier =
            content::Verifier::connect(self.app, &self.record, self.settings.timeout).await?;
        if self.settings.checksums {
            rec.begin("verify_ranges").await;
            let verdicts = verifier.range_pass(&tables, &self.cancel).await?;
            if verdicts.iter().any(|v| v.differs()) {
                let error = format!(
                    "verification failed before the freeze (nothing was frozen): {}",
                    content::differences(verdicts.iter().map(|v| &v.differences))
                );
                rec.end(
                    StepOutcome::Failed,
                    json!({"tables": verdicts, "error": error}),
                )
                .await;
                return Err(Stop::Failed(EngineError::invalid("verify_failed", error)));
            }
            rec.end(StepOutcome::Succeeded, json!({"tables": verdicts}))
                .await;
            self.check_cancel()?;
        }

        // The reverse migration is installed while writes still go on: its capture on the new
        // server sees no replicated change (the apply runs with session_replication_role =
        // replica) and the application writes there only after the finish, so its tables are in
        // sync from the freeze point on, and the freeze window does not pay for the DDL.
        if let Some(name) = self.settings.reverse_name.clone() {
            rec.begin("arm_reverse").await;
            let armed = self.arm_reverse(&name, &mut src, &mut dst).await?;
            rec.end(
                StepOutcome::Succeeded,
                json!({"reverse_migration": armed.name}),
            )
            .await;
            self.reverse = Some(armed);
            self.check_cancel()?;
        }

        // Writes are blocked from the moment the freeze asks for its locks.
        rec.begin("freeze").await;
        let message = self.message().await?;
        let blocked_from = Instant::now();
        let frozen_at = Utc::now();
        let lock_timeout = self.settings.timeout.min(Duration::from_secs(10));
        *frozen = true;
        freeze::freeze(&mut src, &schema, &tables, &message, lock_timeout).await?;
        let freeze_took = blocked_from.elapsed();
        rec.end(
            StepOutcome::Succeeded,
            json!({"tables": tables.len(), "seconds": freeze_took.as_secs_f64(), "message": message}),
        )
        .await;
        self.check_cancel()?;

        rec.begin("drain").await;
        let tick = drain::final_tick(&mut src, &schema).await?;
        let waited = tokio::select! {
            r = drain::wait_applied(&mut dst, &schema, tick, self.settings.timeout, &self.cancel) => r?,
            _ = self.cancel.cancelled() => return Err(Stop::Failed(EngineError::Cancelled)),
        };
        rec.end(
            StepOutcome::Succeeded,
            json!({"final_tick": tick, "seconds": waited.as_secs_f64()}),
        )
        .await;
        self.check_cancel()?;

        rec.begin("sequences").await;
        let moved = sequences::move_forward(&mut src, &mut dst, &tables).await?;
        rec.end(StepOutcome::Succeeded, json!({"moved": moved}))
            .await;
        self.check_cancel()?;

        rec.begin("verify").await;
        let compared = verifier.in_freeze(&tables, self.settings.checksums).await?;
        if compared.iter().any(|c| !c.matches) {
            let error = format!(
                "verification failed: {}",
                content::differences(compared.iter().map(|c| &c.differences))
            );
            rec.end(
                StepOutcome::Failed,
                json!({"tables": compared, "checksums": self.settings.checksums, "error": error}),
            )
            .await;
            return Err(Stop::Failed(EngineError::invalid("verify_failed", error)));
        }
        rec.end(
            StepOutcome::Succeeded,
            json!({"tables": compared, "checksums": self.settings.checksums}),
        )
        .await;
        self.check_cancel()?;

        rec.begin("finish").await;
        let reverse = self.reverse.clone();
        // From here on the cutover completes: an abort request no longer applies.
        self.app.supervisor.stop(self.record.id).await;
        if let Err(e) = self
            .app
            .store
            .set_desired_state(self.record.id, DesiredState::CutOver)
            .await
        {
            // The run is stopped but the record says running: restart it and give writes back.
            let _ = self.app.supervisor.start(&self.record).await;
            return Err(Stop::Failed(EngineError::Store(e)));
        }
        *frozen = false;
        self.reverse = None;
        let lifted = self.lift_earlier_freezes(&mut dst).await;
        if let Some(r) = &reverse {
            if let Err(e) = self.app.supervisor.start(r).await {
                tracing::error!(migration = %r.name, error = %e, "cannot start the reverse migration");
            }
        }
        let blocked = blocked_from.elapsed();
        let finish = json!({
            "writes_blocked_seconds": blocked.as_secs_f64(),
            "reverse_migration": reverse.as_ref().map(|r| r.name.clone()),
            "earlier_freezes_lifted": lifted,
        });
        rec.end(StepOutcome::Succeeded, finish).await;
        result["writes_blocked_seconds"] = blocked.as_secs_f64().into();
        result["frozen_at"] = json!(frozen_at);
        result["final_tick"] = tick.into();
        result["sequences_moved"] = moved.len().into();
        result["reverse_migration"] = json!(reverse.map(|r| r.name));
        tracing::info!(migration = %self.record.name, blocked_s = blocked.as_secs_f64(), "cutover finished");
        Ok(())
    }

    /// Undoes an armed reverse migration: its capture, its bookkeeping and its record.
    async fn remove_reverse(&self, r: &MigrationRecord) -> EngineResult<()> {
        let (mut src, mut dst) = self.connect().await?;
        reverse::disarm(&mut dst, &mut src, r).await?;
        self.app
            .store
            .delete_migration(r.id)
            .await
            .map_err(EngineError::from)
    }

    /// Stores and installs the reverse migration (new → old), its tables synced as of now.
    async fn arm_reverse(
        &self,
        name: &str,
        src: &mut PgConnection,
        dst: &mut PgConnection,
    ) -> EngineResult<MigrationRecord> {
        let now = Utc::now();
        let record = MigrationRecord {
            id: Uuid::new_v4(),
            name: name.into(),
            source: self.record.target.clone(),
            target: self.record.source.clone(),
            table_patterns: self.record.table_patterns.clone(),
            tables: self.record.tables.clone(),
            desired_state: DesiredState::Running,
            last_error: None,
            created_at: now,
            updated_at: now,
        };
        self.app.store.insert_migration(&record).await?;
        if let Err(e) = reverse::arm(dst, src, &record).await {
            let _ = reverse::disarm(dst, src, &record).await;
            let _ = self.app.store.delete_migration(record.id).await;
            return Err(e);
        }
        Ok(record)
    }

    /// A cut-over migration whose source is this cutover's target (the old server of an earlier
    /// cutover, now taking writes back) keeps its capture and freeze there: remove both.
    async fn lift_earlier_freezes(&self, dst: &mut PgConnection) -> Vec<String> {
        let mut lifted = Vec::new();
        let Ok(all) = self.app.store.list_migrations().await else {
            return lifted;
        };
        for m in all.iter().filter(|m| {
            m.desired_state == DesiredState::CutOver
                && m.id != self.record.id
                && m.source.cluster_id == self.record.target.cluster_id
                && m.source.database == self.record.target.database
        }) {
            match reverse::retire_source(dst, &m.schema_name()).await {
                Ok(true) => lifted.push(m.name.clone()),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(migration = %m.name, error = %e, "cannot lift an earlier freeze on the target")
                }
            }
        }
        lifted
    }
}

/// Sequence drift (source value vs target value) for the migration's status; `None` when a side
/// cannot be read (the status says why elsewhere).
pub async fn sequence_drift(
    app: &App,
    record: &MigrationRecord,
) -> Option<Vec<sequences::SequenceDrift>> {
    let read = async {
        let (source, target) = app.supervisor.endpoints(record).await?;
        let mut src = pg::connect("the source", &source).await?;
        let mut dst = pg::connect("the target", &target).await?;
        sequences::drift(&mut src, &mut dst, &record.tables).await
    };
    match read.await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::debug!(migration = %record.name, error = %e, "cannot read sequence drift");
            None
        }
    }
}

/// The preflight gates alone, as a dry run reports them, without recording an operation: for the
/// dashboard's checklist, which refreshes them while an operator watches (a stored dry run each
/// time would fill the migration's operation history). Holds no claim on the migration, so it
/// never stands in the way of a cutover being started.
pub async fn preflight(
    app: &App,
    name: &str,
    max_lag_seconds: Option<f64>,
    reverse: bool,
) -> ServiceResult<Vec<gates::Gate>> {
    let record = find(app, name).await?;
    require_running(&record)?;
    let max_lag = seconds("max_lag_seconds", max_lag_seconds, 5.0)?;
    let check = async {
        let (source, target) = app.supervisor.endpoints(&record).await?;
        let mut src = pg::connect("the source", &source).await?;
        let mut dst = pg::connect("the target", &target).await?;
        let status = app.supervisor.status(record.id);
        gates::check(
            &mut src,
            &mut dst,
            &gates::GateInput {
                tables: &record.tables,
                status: status.as_ref(),
                max_lag_seconds: max_lag,
                long_transaction_seconds: max_lag.max(1.0),
                reverse,
                // The checklist refreshes every few seconds: it names the keys, the cutover's
                // own preflight counts the rows that violate them.
                foreign_key_rows: false,
            },
        )
        .await
    };
    Ok(check.await?)
}
