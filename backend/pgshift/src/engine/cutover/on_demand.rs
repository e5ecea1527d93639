//! Engine layer: verification on demand, while replication runs, step by step: every table
//! compared at a common point (see `compare`), then optionally the key ranges that differ
//! repaired and compared again. Each step is reported through a [`StepRecorder`], as the
//! cutover's are.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{compare, Finished, StepRecorder};
use crate::engine::{EngineError, EngineResult, Supervisor};
use crate::store::{MigrationRecord, OperationState, StepOutcome};

/// How a verification runs, validated by the service from the request.
#[derive(Debug, Clone)]
pub struct VerifyPlan {
    /// Re-copy the key ranges that differ.
    pub repair: bool,
    /// Rows per compared key range.
    pub range_rows: i64,
}

/// Runs the verification of `record` to its end and says how it ended.
pub async fn run(
    supervisor: &Supervisor,
    record: &MigrationRecord,
    plan: VerifyPlan,
    cancel: CancellationToken,
    rec: &mut dyn StepRecorder,
) -> Finished {
    let mut result = json!({});
    match steps(supervisor, record, &plan, &cancel, rec, &mut result).await {
        Ok(()) => Finished {
            state: OperationState::Succeeded,
            result,
            error: None,
        },
        Err(EngineError::Cancelled) => Finished {
            state: OperationState::Aborted,
            result,
            error: Some("aborted on request".into()),
        },
        Err(e) => {
            // The record says what callers may read; the log keeps the detail.
            tracing::warn!(migration = %record.name, error = %e, "verification failed");
            Finished {
                state: OperationState::Failed,
                result,
                error: Some(e.shown()),
            }
        }
    }
}

async fn steps(
    supervisor: &Supervisor,
    record: &MigrationRecord,
    plan: &VerifyPlan,
    cancel: &CancellationToken,
    rec: &mut dyn StepRecorder,
    result: &mut Value,
) -> EngineResult<()> {
    let (repair, range_rows) = (plan.repair, plan.range_rows);
    let (source, target) = supervisor.endpoints(record).await?;
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
