//! Service layer: verification on demand, run as an operation like the cutover: the request, its
//! validation and the operation record; the engine's `cutover::on_demand` runs the steps (every
//! table compared at a common point, optionally the differing key ranges repaired).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{require_running, seconds};
use crate::engine::cutover::on_demand;
use crate::service::migrations::find;
use crate::service::operations::{new_operation, Recorder};
use crate::service::{App, ServiceError, ServiceResult};
use crate::store::Operation;

/// `POST /api/v1/migrations/{name}/verify`
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Re-copy the key ranges that differ.
    pub repair: Option<bool>,
    /// Rows per compared key range (default 10,000).
    pub range_rows: Option<i64>,
    /// Refused (409 `lagging`) while the target is further behind the source than this, in
    /// seconds (default 5); before each table, the verification waits until it is not.
    pub max_lag_seconds: Option<f64>,
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
    let max_lag = seconds("max_lag_seconds", req.max_lag_seconds, 5.0)?;
    let status = app.supervisor.status(record.id);
    if !status.as_ref().is_some_and(|s| s.all_synced()) {
        return Err(ServiceError::conflict(
            "not_synced",
            format!(
                "migration {name:?} must be running here with every table synced to be verified"
            ),
        ));
    }
    // Like the cutover's lag gate: each table's writes would wait for the target to catch up.
    if let Some(lag) = status.and_then(|s| s.lag_seconds).filter(|l| *l > max_lag) {
        return Err(ServiceError::conflict(
            "lagging",
            format!(
                "the target of migration {name:?} is {lag:.1} s behind the source, more than max_lag_seconds ({max_lag} s): verifying now would hold each table's writes while the target catches up; verify once it has caught up, or raise max_lag_seconds"
            ),
        ));
    }
    let repair = req.repair.unwrap_or(false);
    let op = new_operation(
        &record,
        "verify",
        requested_by,
        json!({"repair": repair, "range_rows": range_rows, "max_lag_seconds": max_lag}),
    );
    let cancel = app.operations.claim(record.id, op.id, "verification")?;
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
    let plan = on_demand::VerifyPlan {
        repair,
        range_rows,
        max_lag: Duration::from_secs_f64(max_lag),
    };
    app.operations.start(id, async move {
        let end = on_demand::run(&task_app.supervisor, &record, plan, cancel, &mut rec).await;
        rec.finish(end.state, Some(end.result), end.error).await;
    });
    Ok(snapshot)
}
