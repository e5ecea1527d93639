//! Engine layer: the cutover's state machine, its one owner. Step by step (preflight, verify
//! ranges, arm the reverse migration, freeze, drain, sequences, verify, finish), each reported
//! through a [`StepRecorder`] (the service's operation record implements it); on any failure or
//! abort before the finish the source's writes are restored and an armed reverse migration
//! removed. What the service asks of a migration's cutover outside a running one (the gates on
//! their own, sequence drift, freezes and ways back a stop or crash left) is in `outside`.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::outside::connect_both;
pub use super::outside::{
    disarm_reverse, left_cutover, lift_freeze, lift_left_freeze, preflight, sequence_drift,
    start_reverse, LeftCutover,
};
use super::verifier::{differences, Verifier};
use super::{drain, freeze, gates, reverse, sequences, Finished, StepRecorder};
use crate::engine::{EngineError, EngineResult, Supervisor};
use crate::store::{DesiredState, MigrationRecord, OperationState, SchemaMode, StepOutcome, Store};

/// How a cutover runs, validated by the service from the request.
#[derive(Debug, Clone)]
pub struct CutoverPlan {
    /// Run the gates only.
    pub dry_run: bool,
    /// Lag threshold of the gate, in seconds.
    pub max_lag: f64,
    /// Longest wait for the freeze's locks and for the drain.
    pub timeout: Duration,
    /// Compare content (else row counts only).
    pub checksums: bool,
    /// Arm a reverse migration of this name before writes resume.
    pub reverse_name: Option<String>,
    /// Longest time the source stays frozen while the cutover runs: past it the source lets
    /// writes through by itself (so a pgshift that died cannot hold it), and the cutover stops.
    pub freeze_limit: Duration,
}

/// Runs the cutover of `record` to its end and says how it ended; `cancel` aborts it (the source
/// is restored). The caller finishes its operation record with the result.
pub async fn run(
    supervisor: &Supervisor,
    record: MigrationRecord,
    plan: CutoverPlan,
    cancel: CancellationToken,
    rec: &mut dyn StepRecorder,
) -> Finished {
    let store = supervisor.store().clone();
    let mut cutover = Cutover {
        supervisor,
        store: store.as_ref(),
        record,
        settings: plan,
        cancel,
        reverse: None,
        frozen: None,
        blocked_from: None,
    };
    cutover.run(rec).await
}

struct Cutover<'a> {
    supervisor: &'a Supervisor,
    store: &'a dyn Store,
    record: MigrationRecord,
    settings: CutoverPlan,
    cancel: CancellationToken,
    /// The reverse migration once armed (before the freeze); removed again if the cutover stops.
    reverse: Option<MigrationRecord>,
    /// The freeze once in place, which the finish makes permanent.
    frozen: Option<freeze::Frozen>,
    /// When writes began to be blocked: from the freeze's first lock request.
    blocked_from: Option<Instant>,
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
    async fn run(&mut self, rec: &mut dyn StepRecorder) -> Finished {
        let mut frozen = false;
        let mut result = json!({});
        let outcome = self.steps(rec, &mut frozen, &mut result).await;
        match outcome {
            Ok(()) => Finished {
                state: OperationState::Succeeded,
                result,
                error: None,
            },
            Err(stop) => {
                let (state, error) = match stop {
                    Stop::Gates(reason) => (OperationState::Failed, reason),
                    Stop::Failed(EngineError::Cancelled) => {
                        (OperationState::Aborted, "aborted on request".to_string())
                    }
                    Stop::Failed(e) => {
                        // The record says what callers may read; the log keeps the detail.
                        tracing::warn!(migration = %self.record.name, error = %e, "cutover failed");
                        (OperationState::Failed, e.shown())
                    }
                };
                if rec.step_open() {
                    rec.end(StepOutcome::Failed, json!({"error": error})).await;
                }
                let mut error = error;
                if frozen {
                    rec.begin("restore").await;
                    match self.restore().await {
                        Ok(()) => {
                            rec.end(StepOutcome::Succeeded, json!({"source_writable": true}))
                                .await
                        }
                        Err(e) => {
                            tracing::error!(migration = %self.record.name, error = %e, "cannot lift the freeze after a failed cutover");
                            let still = format!(
                                "the source is still frozen: {}; pgshift keeps trying to lift it (`pgshift migration unfreeze {}` tries now), and the source lets writes through by itself once freeze_limit_seconds have passed",
                                e.shown(),
                                self.record.name
                            );
                            rec.end(StepOutcome::Failed, json!({"error": still})).await;
                            result["source_still_frozen"] = true.into();
                            error = format!("{error}; {still}");
                            // The migration's run notices, and lifts the freeze at the start
                            // of its next attempt (saying the source is still frozen until then).
                            self.supervisor.left_freezes().note(self.record.id, &still);
                        }
                    }
                }
                // Reported for every outcome: how long writes waited or failed on the source.
                result["writes_blocked_seconds"] = self
                    .blocked_from
                    .map_or(0.0, |at| at.elapsed().as_secs_f64())
                    .into();
                if let Some(r) = self.reverse.take() {
                    if let Err(e) = self.remove_reverse(&r).await {
                        tracing::error!(migration = %r.name, error = %e, "cannot remove the reverse migration of a stopped cutover");
                    }
                }
                tracing::warn!(migration = %self.record.name, %error, "cutover stopped");
                Finished {
                    state,
                    result,
                    error: Some(error),
                }
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
        connect_both(self.supervisor, &self.record).await
    }

    /// Lifts the freeze, which needs the source only (the target may be what failed); tried a
    /// few times over some seconds. The migration's run never stopped, so replication goes on
    /// as before.
    async fn restore(&self) -> EngineResult<()> {
        let mut tried = 0;
        loop {
            match lift_freeze(self.supervisor, &self.record).await {
                Ok(_) => return Ok(()),
                Err(e) if tried >= 3 => return Err(e),
                Err(e) => {
                    tracing::warn!(migration = %self.record.name, error = %e, "cannot lift the freeze yet; trying again");
                    tokio::time::sleep(Duration::from_secs(1 << tried)).await;
                    tried += 1;
                }
            }
        }
    }

    async fn target_cluster(&self) -> EngineResult<String> {
        Ok(self
            .store
            .cluster_by_id(self.record.target.cluster_id)
            .await?
            .map(|c| c.name)
            .unwrap_or_default())
    }

    async fn moved_message(&self) -> EngineResult<String> {
        let (_, target) = self.supervisor.endpoints(&self.record).await?;
        let cluster = self.target_cluster().await?;
        Ok(freeze::moved_message(
            &self.record.name,
            &cluster,
            target.get_host(),
            target.get_port(),
            &self.record.target.database,
        ))
    }

    async fn steps(
        &mut self,
        rec: &mut dyn StepRecorder,
        frozen: &mut bool,
        result: &mut Value,
    ) -> Result<(), Stop> {
        let schema = self.record.schema_name();
        let tables = self.record.tables.clone();

        rec.begin("preflight").await;
        let (mut src, mut dst) = self.connect().await?;
        // Held as long as `src` lives: while it is, nothing else lifts the freeze.
        freeze::hold_cutover_lock(&mut src, &schema).await?;
        let status = self.supervisor.status(self.record.id);
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
            Verifier::connect(self.supervisor, &self.record, self.settings.timeout).await?;
        if self.settings.checksums {
            rec.begin("verify_ranges").await;
            let verdicts = verifier.range_pass(&tables, &self.cancel).await?;
            if verdicts.iter().any(|v| v.differs()) {
                let error = format!(
                    "verification failed before the freeze (nothing was frozen): {}",
                    differences(verdicts.iter().map(|v| &v.differences))
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
        let message = freeze::in_progress_message(&self.record.name, &self.target_cluster().await?);
        let moved_message = self.moved_message().await?;
        let blocked_from = Instant::now();
        self.blocked_from = Some(blocked_from);
        let frozen_at = Utc::now();
        let lock_timeout = self.settings.timeout.min(Duration::from_secs(10));
        let limit = self.settings.freeze_limit;
        *frozen = true;
        let held =
            freeze::freeze(&mut src, &schema, &tables, &message, lock_timeout, limit).await?;
        self.frozen = Some(held.clone());
        let freeze_took = blocked_from.elapsed();
        rec.end(
            StepOutcome::Succeeded,
            json!({"tables": tables.len(), "seconds": freeze_took.as_secs_f64(), "message": message}),
        )
        .await;
        self.check_cancel()?;

        rec.begin("drain").await;
        let tick = drain::final_tick(&mut src, &schema).await?;
        let drain_time = self.drain_time(blocked_from)?;
        let limited = drain_time < self.settings.timeout;
        let waited = tokio::select! {
            r = drain::wait_applied(&mut dst, &schema, tick, drain_time, &self.cancel) => r.map_err(|e| match e {
                EngineError::Invalid { code: "drain_timeout", message } if limited => EngineError::invalid(
                    "freeze_limit",
                    format!("{message}: the freeze reached its limit (freeze_limit_seconds) first"),
                ),
                e => e,
            })?,
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
                differences(compared.iter().map(|c| &c.differences))
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
        // The decision: the freeze becomes permanent (if it is still whole, nothing got past it
        // and it is inside its limit). From here on the cutover completes and is never taken
        // back: writers are told the database moved. A crash after this point is rolled forward
        // at the next start (service::recovery).
        freeze::make_permanent(&mut src, &schema, &tables, &held, &moved_message, tick).await?;
        *frozen = false;
        let reverse = self.reverse.take();
        // A sequence advanced on the old server since the sequences step (nextval is not a
        // write the freeze sees) moves again.
        let moved_again = sequences::move_forward(&mut src, &mut dst, &tables)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(migration = %self.record.name, error = %e, "cannot move sequences again at the finish");
                Vec::new()
            });
        self.supervisor.stop(self.record.id).await;
        let mut recorded = self
            .store
            .set_desired_state(self.record.id, DesiredState::CutOver)
            .await;
        for wait in [1, 2, 4] {
            if recorded.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(wait)).await;
            recorded = self
                .store
                .set_desired_state(self.record.id, DesiredState::CutOver)
                .await;
        }
        if let Err(e) = recorded {
            // Decided on the source: not taken back. The next start records it.
            tracing::error!(migration = %self.record.name, error = %e, "the cutover finished on the source but cannot be recorded");
            return Err(Stop::Failed(EngineError::invalid(
                "finish_unrecorded",
                "the cutover finished on the source (the old server is frozen for good and says where the database moved) but pgshift could not record it; it does so at its next start",
            )));
        }
        let lifted = self.lift_earlier_freezes(&mut dst).await;
        if let Some(r) = &reverse {
            start_reverse(self.supervisor, r).await;
        }
        let blocked = blocked_from.elapsed();
        let finish = json!({
            "writes_blocked_seconds": blocked.as_secs_f64(),
            "reverse_migration": reverse.as_ref().map(|r| r.name.clone()),
            "earlier_freezes_lifted": lifted,
            "sequences_moved_again": moved_again.len(),
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

    /// How long the drain may wait: the request's timeout, cut short by the freeze's limit.
    fn drain_time(&self, blocked_from: Instant) -> Result<Duration, Stop> {
        let left = self
            .settings
            .freeze_limit
            .saturating_sub(blocked_from.elapsed());
        if left.is_zero() {
            return Err(Stop::Failed(EngineError::invalid(
                "freeze_limit",
                "the freeze reached its limit (freeze_limit_seconds) before the drain began; the source takes writes again",
            )));
        }
        Ok(self.settings.timeout.min(left))
    }

    /// Undoes an armed reverse migration: its capture, its bookkeeping and its record.
    async fn remove_reverse(&self, r: &MigrationRecord) -> EngineResult<()> {
        let (mut src, mut dst) = self.connect().await?;
        reverse::disarm(&mut dst, &mut src, r).await?;
        self.store
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
            // Stored as created: nothing runs it until the finish starts it, so a crash before
            // the finish leaves it inert (recovery disarms it) rather than replicating the new
            // server back before anyone moved to it.
            desired_state: DesiredState::Created,
            last_error: None,
            created_at: now,
            updated_at: now,
            // The old server has every table already.
            schema_mode: SchemaMode::Existing,
        };
        self.store.insert_migration(&record).await?;
        if let Err(e) = reverse::arm(dst, src, &record).await {
            let _ = reverse::disarm(dst, src, &record).await;
            let _ = self.store.delete_migration(record.id).await;
            return Err(e);
        }
        Ok(record)
    }

    /// A cut-over migration whose source is this cutover's target (the old server of an earlier
    /// cutover, now taking writes back) keeps its capture and freeze there: remove both.
    async fn lift_earlier_freezes(&self, dst: &mut PgConnection) -> Vec<String> {
        let mut lifted = Vec::new();
        let Ok(all) = self.store.list_migrations().await else {
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
