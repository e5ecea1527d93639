//! Service layer: verification on demand, run as an operation like the cutover: the request, its
//! validation and the operation record; the engine's `cutover::on_demand` runs the steps (every
//! table compared at a common point, optionally the differing key ranges repaired).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::require_running;
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
    let plan = on_demand::VerifyPlan { repair, range_rows };
    app.operations.start(id, async move {
        let end = on_demand::run(&task_app.supervisor, &record, plan, cancel, &mut rec).await;
        rec.finish(end.state, Some(end.result), end.error).await;
    });
    Ok(snapshot)
}
