//! `/api/v1/operations/{id}` and `/api/v1/migrations/{name}/operations`: polling cutovers and
//! verifications.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Authorized, Operator, Viewer};
use super::{ApiError, AppState};
use crate::service::operations;
use crate::store::Operation;

pub async fn get(
    State(app): State<AppState>,
    _role: Authorized<Viewer>,
    Path(id): Path<String>,
) -> Result<Json<Operation>, ApiError> {
    Ok(Json(operations::get(&app, &id).await?))
}

pub async fn list(
    State(app): State<AppState>,
    _role: Authorized<Viewer>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Operation>>, ApiError> {
    Ok(Json(operations::list(&app, &name).await?))
}

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
