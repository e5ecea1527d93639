//! HTTP layer: `/api/v1/migrations/{name}/cutover`, `/cutover/abort` and `/verify`: each starts (or
//! stops) an operation; poll it at `/api/v1/operations/{id}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Authorized, Operator};
use super::error::{
    AuthErrors, BodyErrors, DatabaseErrors, NotFoundErrors, OperationConflicts, RoleErrors,
};
use super::json::ApiJson;
use super::{ApiError, AppState, Caller};
use crate::service::cutover::{self, CutoverRequest, Unfrozen, VerifyRequest};
use crate::store::Operation;

type Accepted = Result<(StatusCode, Json<Operation>), ApiError>;

/// Starts a cutover: gates, every row compared range by range while writes go on
/// (`verify_ranges`), optionally the way back, freeze, drain, sequences, the rows written since
/// compared again (`verify`; row counts only with `checksums: false`), then the switch. `dry_run`
/// runs the gates only. Poll the returned operation.
#[utoipa::path(post, path = "/api/v1/migrations/{name}/cutover", operation_id = "start_cutover", tag = "cutover", request_body = CutoverRequest,
    params(("name" = String, Path, description = "the migration's name")),
    responses((status = 202, body = Operation, description = "the cutover operation, running; poll GET /api/v1/operations/{id}"), AuthErrors, RoleErrors, NotFoundErrors, BodyErrors, OperationConflicts, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn start(
    State(app): State<AppState>,
    _role: Authorized<Operator>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CutoverRequest>,
) -> Accepted {
    let op = cutover::start_cutover(&app, &name, body, &caller.0.sub).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// Aborts the migration's running cutover or verification; source writes are restored unless
/// the switch already happened.
#[utoipa::path(post, path = "/api/v1/migrations/{name}/cutover/abort", operation_id = "abort_cutover", tag = "cutover",
    params(("name" = String, Path, description = "the migration's name")),
    responses((status = 202, body = Operation, description = "the operation being aborted; poll it until it is `aborted`"), AuthErrors, RoleErrors, NotFoundErrors, OperationConflicts),
    security(("bearer" = [])))]
pub async fn abort(
    State(app): State<AppState>,
    _role: Authorized<Operator>,
    Path(name): Path<String>,
) -> Accepted {
    let op = cutover::abort(&app, &name).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// Starts a verification: every table compared key range by key range on both sides, over the
/// columns each side has now (a column on one side only is listed in the table's `differences`);
/// `repair` re-copies the ranges that differ. The result lists the tables that differ. Refused
/// while the target lags more than `max_lag_seconds`; a table whose writes were held for the
/// server's `verify_hold_seconds` is let go and reported as `not_verified`.
#[utoipa::path(post, path = "/api/v1/migrations/{name}/verify", operation_id = "start_verify", tag = "cutover", request_body = VerifyRequest,
    params(("name" = String, Path, description = "the migration's name")),
    responses((status = 202, body = Operation, description = "the verify operation, running; poll GET /api/v1/operations/{id}"), AuthErrors, RoleErrors, NotFoundErrors, BodyErrors, OperationConflicts, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn verify(
    State(app): State<AppState>,
    _role: Authorized<Operator>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Accepted {
    let op = cutover::start_verify(&app, &name, body, &caller.0.sub).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// Lifts a freeze that a stopped cutover (or a crash) left on the source of a migration that was
/// not cut over. pgshift lifts such a freeze by itself as soon as it can, and the source lets
/// writes through by itself once the cutover's `freeze_limit_seconds` have passed; this tries
/// now. Refused while an operation runs and for a cut-over migration.
#[utoipa::path(post, path = "/api/v1/migrations/{name}/unfreeze", operation_id = "unfreeze_source", tag = "cutover",
    params(("name" = String, Path, description = "the migration's name")),
    responses((status = 200, body = Unfrozen, description = "whether a freeze was lifted"), AuthErrors, RoleErrors, NotFoundErrors, OperationConflicts, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn unfreeze(
    State(app): State<AppState>,
    _role: Authorized<Operator>,
    Path(name): Path<String>,
) -> Result<Json<Unfrozen>, ApiError> {
    Ok(Json(cutover::unfreeze(&app, &name).await?))
}
