//! `/api/v1/clusters`

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Admin, Authorized, Viewer};
use super::json::ApiJson;
use super::{ApiError, AppState};
use crate::service::clusters::{self, ClusterView, NewCluster};

pub async fn create(
    State(app): State<AppState>,
    _caller: Authorized<Admin>,
    ApiJson(body): ApiJson<NewCluster>,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    Ok((StatusCode::CREATED, Json(clusters::add(&app, body).await?)))
}

pub async fn list(
    State(app): State<AppState>,
    _caller: Authorized<Viewer>,
) -> Result<Json<Vec<ClusterView>>, ApiError> {
    Ok(Json(clusters::list(&app).await?))
}

pub async fn get(
    State(app): State<AppState>,
    _caller: Authorized<Viewer>,
    Path(name): Path<String>,
) -> Result<Json<ClusterView>, ApiError> {
    Ok(Json(clusters::get(&app, &name).await?))
}

pub async fn remove(
    State(app): State<AppState>,
    _caller: Authorized<Admin>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    clusters::remove(&app, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
