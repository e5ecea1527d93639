//! Engine layer: verification on demand, while replication runs, step by step: every table
//! compared at a common point (see `compare`), then optionally the key ranges that differ
//! repaired and compared again. Each step is reported through a [`StepRecorder`], as the
//! cutover's are. Before each table is held, the target must be within the request's lag
//! threshold (waited for, holding nothing); while it is held, the engine's `verify_hold` bounds
//! how long its writes wait: a table let go at the bound is reported as not verified, and the
//! verification fails naming it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{compare, Finished, StepRecorder};
use crate::engine::{EngineError, EngineResult, Supervisor};
use crate::store::{MigrationRecord, OperationState, StepOutcome, TableSpec};

/// How a verification runs, validated by the service from the request.
#[derive(Debug, Clone)]
pub struct VerifyPlan {
    /// Re-copy the key ranges that differ.
    pub repair: bool,
    /// Rows per compared key range.
    pub range_rows: i64,
    /// No table is held while the target is further behind than this.
    pub max_lag: Duration,
}

/// How long a table's turn waits for the target to come back within the lag threshold.
const LAG_WAIT: Duration = Duration::from_secs(60);

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
    let (source, target) = supervisor.endpoints(record).await?;
    let mut conns = compare::Connections::open(&source, &target).await?;
    let schema = record.schema_name();
    let message = format!(
        "pgshift migration {:?} is verifying this table; retry in a moment",
        record.name
    );
    let cplan = compare::Plan {
        schema: &schema,
        message: &message,
        hold: supervisor.settings().verify_hold,
        hold_setting: "verify_hold_seconds",
        range_rows: plan.range_rows,
    };
    rec.begin("verify").await;
    let mut verdicts = Vec::new();
    for t in &record.tables {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        within_lag(supervisor, record, t, plan.max_lag, cancel).await?;
        let verdict = compare::verify_table(&mut conns, &cplan, t, cancel).await?;
        if verdict.error.is_some() {
            // Let go at the bound: the comparison's sessions may be mid-statement.
            conns = compare::Connections::open(&source, &target).await?;
        }
        verdicts.push(verdict);
    }
    let differs = verdicts.iter().any(|v| v.differs());
    let unverified: Vec<String> = verdicts.iter().filter_map(|v| v.error.clone()).collect();
    rec.end(
        if unverified.is_empty() {
            StepOutcome::Succeeded
        } else {
            StepOutcome::Failed
        },
        json!({"tables": verdicts}),
    )
    .await;
    result["tables"] = json!(verdicts);
    result["differs"] = differs.into();
    if !unverified.is_empty() {
        return Err(EngineError::invalid(
            "not_verified",
            format!(
                "{} of {} tables could not be verified: {}",
                unverified.len(),
                verdicts.len(),
                unverified.join("; ")
            ),
        ));
    }
    if !(plan.repair && differs) {
        return Ok(());
    }
    rec.begin("repair").await;
    let mut repaired = Vec::new();
    let mut let_go = Vec::new();
    for (t, v) in record.tables.iter().zip(&verdicts) {
        if !v.differs() {
            continue;
        }
        within_lag(supervisor, record, t, plan.max_lag, cancel).await?;
        let mut shown = json!({"table": v.table, "ranges": v.differing_ranges.len()});
        match compare::repair_table(&mut conns, &cplan, t, v, cancel).await {
            Ok(rows) => shown["rows_written"] = rows.into(),
            Err(e) if compare::let_go(&e) => {
                shown["error"] = e.shown().into();
                let_go.push(e.shown());
                conns = compare::Connections::open(&source, &target).await?;
            }
            Err(e) => return Err(e),
        }
        repaired.push(shown);
    }
    rec.end(
        if let_go.is_empty() {
            StepOutcome::Succeeded
        } else {
            StepOutcome::Failed
        },
        json!({"tables": repaired}),
    )
    .await;
    result["repaired"] = json!(repaired);
    if !let_go.is_empty() {
        return Err(EngineError::invalid(
            "not_repaired",
            format!("the repair did not finish: {}", let_go.join("; ")),
        ));
    }
    rec.begin("reverify").await;
    let mut after = Vec::new();
    for (t, v) in record.tables.iter().zip(&verdicts) {
        if v.differs() {
            within_lag(supervisor, record, t, plan.max_lag, cancel).await?;
            after.push(compare::verify_table(&mut conns, &cplan, t, cancel).await?);
        }
    }
    let still = after.iter().any(|v| v.differs() || v.error.is_some());
    rec.end(
        if still {
            StepOutcome::Failed
        } else {
            StepOutcome::Succeeded
        },
        json!({"tables": after}),
    )
    .await;
    result["after_repair"] = json!(after);
    result["differs"] = after.iter().any(|v| v.differs()).into();
    let unverified: Vec<String> = after.iter().filter_map(|v| v.error.clone()).collect();
    if !unverified.is_empty() {
        return Err(EngineError::invalid(
            "not_verified",
            format!(
                "repaired, but {} tables could not be verified again: {}",
                unverified.len(),
                unverified.join("; ")
            ),
        ));
    }
    Ok(())
}

/// Waits, holding nothing, until the target is within `max_lag` of the source before `table` is
/// held (its writes would otherwise wait for the target to catch up), at most [`LAG_WAIT`].
async fn within_lag(
    supervisor: &Supervisor,
    record: &MigrationRecord,
    table: &TableSpec,
    max_lag: Duration,
    cancel: &CancellationToken,
) -> EngineResult<()> {
    let since = Instant::now();
    loop {
        let Some(status) = supervisor.status(record.id) else {
            return Err(EngineError::invalid(
                "not_running",
                format!(
                    "migration {:?} stopped running during the verification",
                    record.name
                ),
            ));
        };
        let lag = status.lag_seconds;
        if lag.is_some_and(|lag| lag <= max_lag.as_secs_f64()) {
            return Ok(());
        }
        if since.elapsed() >= LAG_WAIT {
            return Err(EngineError::invalid(
                "lagging",
                format!(
                    "the target stayed {} behind the source for {} s before {} could be held (max_lag_seconds is {}); no table's writes were held for it",
                    lag.map_or_else(|| "an unmeasured time".into(), |l| format!("{l:.1} s")),
                    LAG_WAIT.as_secs(),
                    table.display_name(),
                    max_lag.as_secs_f64()
                ),
            ));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(EngineError::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
