//! `/api/v1/migrations`

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Admin, Authorized, Operator, Viewer};
use super::json::ApiJson;
use super::{ApiError, AppState};
use crate::service::migrations::{self, MigrationView, NewMigration};

type ViewResult = Result<Json<MigrationView>, ApiError>;

pub async fn create(
    State(app): State<AppState>,
    _caller: Authorized<Admin>,
    ApiJson(body): ApiJson<NewMigration>,
) -> Result<(StatusCode, Json<MigrationView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(migrations::create(&app, body).await?),
    ))
}

pub async fn list(
    State(app): State<AppState>,
    _caller: Authorized<Viewer>,
) -> Result<Json<Vec<MigrationView>>, ApiError> {
    Ok(Json(migrations::list(&app).await?))
}

pub async fn get(
    State(app): State<AppState>,
    _caller: Authorized<Viewer>,
    Path(name): Path<String>,
) -> ViewResult {
    Ok(Json(migrations::get(&app, &name).await?))
}

pub async fn start(
    State(app): State<AppState>,
    _caller: Authorized<Operator>,
    Path(name): Path<String>,
) -> ViewResult {
    Ok(Json(migrations::start(&app, &name).await?))
}

pub async fn pause(
    State(app): State<AppState>,
    _caller: Authorized<Operator>,
    Path(name): Path<String>,
) -> ViewResult {
    Ok(Json(migrations::pause(&app, &name).await?))
}

pub async fn resume(
    State(app): State<AppState>,
    _caller: Authorized<Operator>,
    Path(name): Path<String>,
) -> ViewResult {
    Ok(Json(migrations::resume(&app, &name).await?))
}

pub async fn remove(
    State(app): State<AppState>,
    _caller: Authorized<Admin>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    migrations::remove(&app, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
