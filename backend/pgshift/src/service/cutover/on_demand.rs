//! Verification on demand, while replication runs: every table compared at a common point
//! (see `engine::cutover::compare`), optionally repairing the key ranges that differ, run as an
//! operation like the cutover.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::require_running;
use crate::engine::cutover::compare;
use crate::engine::{EngineError, EngineResult};
use crate::service::migrations::find;
use crate::service::operations::{new_operation, Recorder};
use crate::service::{App, ServiceError, ServiceResult};
use crate::store::{MigrationRecord, Operation, OperationState, StepOutcome};

/// `POST /api/v1/migrations/{name}/verify`
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Re-copy the key ranges that differ.
    pub repair: Option<bool>,
    /// Rows per compared key range (default 10,000).
    pub range_rows: Option<i64>,
}

/// Starts a verification operation.
pub async fn start_verify(
    app: &Arc<App>,
    name: &str,
    req: VerifyRequest,
    requested_by: &str,
) -> ServiceResult<Operation> {
    let record = find(app, name).await?;
    require_running(&record)?;
    let range_rows = req.range_rows.unwrap_or(10_000);
    if !(1..=10_000_000).contains(&range_rows) {
        return Err(ServiceError::invalid(
            "invalid_body",
            "range_rows must be between 1 and 10000000",
        ));
    }
    let synced = app
        .supervisor
        .status(record.id)
        .is_some_and(|s| s.all_synced());
    if !synced {
        return Err(ServiceError::conflict(
            "not_synced",
            format!(
                "migration {name:?} must be running here with every table synced to be verified"
            ),
        ));
    }
    let repair = req.repair.unwrap_or(false);
    let op = new_operation(
        &record,
        "verify",
        requested_by,
        json!({"repair": repair, "range_rows": range_rows}),
    );
    let cancel = app.operations.claim(record.id, op.id)?;
    let mut rec = match Recorder::create(app.store.clone(), op, None).await {
        Ok(r) => r,
        Err(e) => {
            app.operations.release(record.id);
            return Err(e);
        }
    };
    let snapshot = rec.op.clone();
    let task_app = app.clone();
    let id = record.id;
    let join = tokio::spawn(async move {
        let mut result = json!({});
        match run_verify(
            &task_app,
            &record,
            repair,
            range_rows,
            &cancel,
            &mut rec,
            &mut result,
        )
        .await
        {
            Ok(()) => {
                rec.finish(OperationState::Succeeded, Some(result), None)
                    .await
            }
            Err(EngineError::Cancelled) => {
                rec.finish(
                    OperationState::Aborted,
                    Some(result),
                    Some("aborted on request".into()),
                )
                .await
            }
            Err(e) => {
                tracing::warn!(migration = %record.name, error = %e, "verification failed");
                rec.finish(OperationState::Failed, Some(result), Some(e.shown()))
                    .await
            }
        }
    });
    app.operations.attach(id, join);
    Ok(snapshot)
}

async fn run_verify(
    app: &App,
    record: &MigrationRecord,
    repair: bool,
    range_rows: i64,
    cancel: &CancellationToken,
    rec: &mut Recorder,
    result: &mut Value,
) -> EngineResult<()> {
    let (source, target) = app.supervisor.endpoints(record).await?;
    let mut conns = compare::Connections::open(&source, &target).await?;
    let schema = record.schema_name();
    let message = format!(
        "pgshift migration {:?} is verifying this table; retry in a moment",
        record.name
    );
    let plan = compare::Plan {
        schema: &schema,
        message: &message,
        drain_timeout: Duration::from_secs(30),
        range_rows,
    };
    rec.begin("verify").await;
    let mut verdicts = Vec::new();
    for t in &record.tables {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        verdicts.push(compare::verify_table(&mut conns, &plan, t, cancel).await?);
    }
    let differs = verdicts.iter().any(|v| v.differs());
    rec.end(StepOutcome::Succeeded, json!({"tables": verdicts}))
        .await;
    result["tables"] = json!(verdicts);
    result["differs"] = differs.into();
    if !(repair && differs) {
        return Ok(());
    }
    rec.begin("repair").await;
    let mut repaired = Vec::new();
    for (t, v) in record.tables.iter().zip(&verdicts) {
        if !v.differs() {
            continue;
        }
        let rows = compare::repair_table(&mut conns, &plan, t, v, cancel).await?;
        repaired.push(
            json!({"table": v.table, "ranges": v.differing_ranges.len(), "rows_written": rows}),
        );
    }
    rec.end(StepOutcome::Succeeded, json!({"tables": repaired}))
        .await;
    rec.begin("reverify").await;
    let mut after = Vec::new();
    for (t, v) in record.tables.iter().zip(&verdicts) {
        if v.differs() {
            after.push(compare::verify_table(&mut conns, &plan, t, cancel).await?);
        }
    }
    let still = after.iter().any(|v| v.differs());
    rec.end(
        if still {
            StepOutcome::Failed
        } else {
            StepOutcome::Succeeded
        },
        json!({"tables": after}),
    )
    .await;
    result["repaired"] = json!(repaired);
    result["after_repair"] = json!(after);
    result["differs"] = still.into();
    Ok(())
}
