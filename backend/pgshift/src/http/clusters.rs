//! HTTP layer: `/api/v1/clusters`

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Admin, Authorized, Viewer};
use super::error::{
    AuthErrors, BodyErrors, ConflictErrors, DatabaseErrors, NotFoundErrors, RoleErrors,
};
use super::json::ApiJson;
use super::{ApiError, AppState};
use crate::service::clusters::{self, ClusterView, NewCluster};

/// Registers a cluster: pgshift connects before storing it. The DSN is stored encrypted and shown
/// without its password.
#[utoipa::path(post, path = "/api/v1/clusters", operation_id = "add_cluster", tag = "clusters", request_body = NewCluster,
    responses((status = 201, body = ClusterView, description = "the cluster, its DSN without the password"), AuthErrors, RoleErrors, BodyErrors, ConflictErrors, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    _caller: Authorized<Admin>,
    ApiJson(body): ApiJson<NewCluster>,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    Ok((StatusCode::CREATED, Json(clusters::add(&app, body).await?)))
}

/// Every registered cluster, by name.
#[utoipa::path(get, path = "/api/v1/clusters", operation_id = "list_clusters", tag = "clusters",
    responses((status = 200, body = Vec<ClusterView>, description = "every cluster, by name"), AuthErrors), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    _caller: Authorized<Viewer>,
) -> Result<Json<Vec<ClusterView>>, ApiError> {
    Ok(Json(clusters::list(&app).await?))
}

/// One cluster.
#[utoipa::path(get, path = "/api/v1/clusters/{name}", operation_id = "get_cluster", tag = "clusters", params(("name" = String, Path, description = "the cluster's name")),
    responses((status = 200, body = ClusterView, description = "the cluster"), AuthErrors, NotFoundErrors), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    _caller: Authorized<Viewer>,
    Path(name): Path<String>,
) -> Result<Json<ClusterView>, ApiError> {
    Ok(Json(clusters::get(&app, &name).await?))
}

/// Forgets a cluster; refused (409) while a migration uses it.
#[utoipa::path(delete, path = "/api/v1/clusters/{name}", operation_id = "remove_cluster", tag = "clusters", params(("name" = String, Path, description = "the cluster's name")),
    responses((status = 204, description = "removed"), AuthErrors, RoleErrors, NotFoundErrors, ConflictErrors),
    security(("bearer" = [])))]
pub async fn remove(
    State(app): State<AppState>,
    _caller: Authorized<Admin>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    clusters::remove(&app, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
