//! HTTP layer: `/api/v1/operations/{id}` and `/api/v1/migrations/{name}/operations`: polling
//! cutovers and verifications.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Authorized, Operator, Viewer};
use super::error::{AuthErrors, NotFoundErrors, OperationConflicts, RoleErrors};
use super::{ApiError, AppState};
use crate::service::operations;
use crate::store::Operation;

/// One operation with its steps so far; poll it until `state` is no longer `running`.
#[utoipa::path(get, path = "/api/v1/operations/{id}", operation_id = "get_operation", tag = "cutover",
    params(("id" = String, Path, description = "the operation's id (a UUID)")),
    responses((status = 200, body = Operation, description = "the operation"), AuthErrors, NotFoundErrors),
    security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    _role: Authorized<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<Operation>, ApiError> {
    Ok(Json(operations::get(&app, &id).await?))
}

/// The migration's cutovers and verifications, newest first (at most 100).
#[utoipa::path(get, path = "/api/v1/migrations/{name}/operations", operation_id = "list_operations", tag = "cutover",
    params(("name" = String, Path, description = "the migration's name")),
    responses((status = 200, body = Vec<Operation>, description = "the migration's operations, newest first"), AuthErrors, NotFoundErrors),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    _role: Authorized<Viewer>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Operation>>, ApiError> {
    Ok(Json(operations::list(&app, &name).await?))
}

/// Aborts a running operation by id.
#[utoipa::path(post, path = "/api/v1/operations/{id}/abort", operation_id = "abort_operation", tag = "cutover",
    params(("id" = String, Path, description = "the operation's id (a UUID)")),
    responses((status = 202, body = Operation, description = "the operation being aborted; poll it until it is `aborted`"), AuthErrors, RoleErrors, NotFoundErrors, OperationConflicts),
    security(("bearer" = [])))]
pub async fn abort(
    State(app): State<AppState>,
    _role: Authorized<Operator>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(operations::abort_by_id(&app, &id).await?),
    ))
}
