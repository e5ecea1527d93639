//! HTTP layer: `POST /api/v1/migrations/{name}/ddl`, a schema change applied on both sides at
//! the same point of the stream.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;

use super::auth::{Admin, Authorized};
use super::error::{
    AuthErrors, BodyErrors, ConflictErrors, DatabaseErrors, NotFoundErrors, RoleErrors,
};
use super::json::ApiJson;
use super::{ApiError, AppState};
use crate::service::ddl;
use crate::service::migrations::MigrationView;

/// A schema change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchemaChange {
    /// One or more statements (`ALTER TABLE …; CREATE INDEX …`), run in one transaction with
    /// `search_path` set to `"$user", public`. Transaction control is refused.
    pub sql: String,
}

/// Runs a schema change on the source in one transaction that also records it in the stream;
/// the worker runs it on the target at that point and goes on with the new columns. Needs every
/// table synced.
#[utoipa::path(post, path = "/api/v1/migrations/{name}/ddl", operation_id = "schema_change", tag = "migrations",
    request_body = SchemaChange,
    params(("name" = String, Path, description = "the migration's name")),
    responses((status = 200, body = MigrationView, description = "the migration: the change is committed on the source and queued for the target"), AuthErrors, RoleErrors, BodyErrors, NotFoundErrors, ConflictErrors, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn run(
    State(app): State<AppState>,
    _caller: Authorized<Admin>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SchemaChange>,
) -> Result<Json<MigrationView>, ApiError> {
    Ok(Json(ddl::run(&app, &name, &body.sql).await?))
}
