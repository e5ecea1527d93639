//! HTTP layer: `/api/v1/migrations`

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::auth::{Admin, Authorized, Operator, Viewer};
use super::error::{
    AuthErrors, BodyErrors, ConflictErrors, DatabaseErrors, ErrorBody, NotFoundErrors, RoleErrors,
};
use super::json::ApiJson;
use super::{ApiError, AppState};
use crate::service::migration_preview::{self, Preview, PreviewRequest};
use crate::service::migration_tables::{self, AddTables};
use crate::service::migrations::{self, MigrationView, NewMigration};

type ViewResult = Result<Json<MigrationView>, ApiError>;

/// Checks and stores a migration (both databases, tables, keys, privileges); installs nothing.
#[utoipa::path(post, path = "/api/v1/migrations", operation_id = "create_migration", tag = "migrations", request_body = NewMigration,
    responses((status = 201, body = MigrationView, description = "the migration, checked and stored"), AuthErrors, RoleErrors, BodyErrors, ConflictErrors, DatabaseErrors),
    security(("bearer" = [])))]
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

/// What creating this migration would do, changing nothing: each table the patterns select,
/// checked as creation checks it (the first 200), and what the migration does not move as rows
/// of its tables (large objects, materialized views, unlogged and foreign tables, partitions
/// left half-detached) with what happens to each. Without `tables` (or with none), every table.
#[utoipa::path(post, path = "/api/v1/migrations/preview", operation_id = "preview_migration", tag = "migrations", request_body = PreviewRequest,
    responses((status = 200, body = Preview, description = "what the patterns select and what happens to each special object"), AuthErrors, RoleErrors, BodyErrors, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn preview(
    State(app): State<AppState>,
    _caller: Authorized<Admin>,
    ApiJson(body): ApiJson<PreviewRequest>,
) -> Result<Json<Preview>, ApiError> {
    let patterns = body.tables.unwrap_or_default();
    Ok(Json(
        migration_preview::preview(&app, &body.source, &body.target, &patterns, body.schema)
            .await?,
    ))
}

/// Every migration with its live state.
#[utoipa::path(get, path = "/api/v1/migrations", operation_id = "list_migrations", tag = "migrations",
    responses((status = 200, body = Vec<MigrationView>, description = "every migration, by name"), AuthErrors), security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    _caller: Authorized<Viewer>,
) -> Result<Json<Vec<MigrationView>>, ApiError> {
    Ok(Json(migrations::list(&app).await?))
}

/// One migration: state, lag, pending events and per-table progress.
#[utoipa::path(get, path = "/api/v1/migrations/{name}", operation_id = "get_migration", tag = "migrations", params(("name" = String, Path, description = "the migration's name")),
    responses((status = 200, body = MigrationView, description = "the migration"), AuthErrors, NotFoundErrors), security(("bearer" = [])))]
pub async fn get(
    State(app): State<AppState>,
    _caller: Authorized<Viewer>,
    Path(name): Path<String>,
) -> ViewResult {
    Ok(Json(migrations::get(&app, &name).await?))
}

/// Installs capture on the source and begins the copy.
#[utoipa::path(post, path = "/api/v1/migrations/{name}/start", operation_id = "start_migration", tag = "migrations", params(("name" = String, Path, description = "the migration's name")),
    responses((status = 200, body = MigrationView, description = "the migration, in its new state"), AuthErrors, RoleErrors, NotFoundErrors, ConflictErrors, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn start(
    State(app): State<AppState>,
    _caller: Authorized<Operator>,
    Path(name): Path<String>,
) -> ViewResult {
    Ok(Json(migrations::start(&app, &name).await?))
}

/// Copies one table again: it is emptied on the target and copied while replication goes on.
#[utoipa::path(post, path = "/api/v1/migrations/{name}/tables/{table}/resync", operation_id = "resync_table", tag = "migrations",
    params(("name" = String, Path, description = "the migration's name"), ("table" = String, Path, description = "the table's unquoted `schema.table` name")),
    responses((status = 200, body = MigrationView, description = "the migration, the table back to pending"), AuthErrors, RoleErrors, NotFoundErrors, ConflictErrors, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn resync_table(
    State(app): State<AppState>,
    _caller: Authorized<Operator>,
    Path((name, table)): Path<(String, String)>,
) -> ViewResult {
    Ok(Json(migrations::resync_table(&app, &name, &table).await?))
}

/// Adds the tables the patterns select (those not in the migration yet), checked as at
/// creation: capture goes in on the source, and the run copies and catches them up while the
/// other tables keep replicating. 422 `already_in_migration` or `pattern_matches_nothing` for a
/// pattern that adds nothing; 409 `target_not_empty` for an added table holding rows on the
/// target (unless `empty_target`), `operation_running`, `cut_over`.
#[utoipa::path(post, path = "/api/v1/migrations/{name}/tables", operation_id = "add_tables", tag = "migrations", request_body = AddTables,
    params(("name" = String, Path, description = "the migration's name")),
    responses((status = 200, body = MigrationView, description = "the migration with its added tables (pending until copied)"), AuthErrors, RoleErrors, BodyErrors, NotFoundErrors, ConflictErrors, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn add_tables(
    State(app): State<AppState>,
    _caller: Authorized<Operator>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<AddTables>,
) -> ViewResult {
    Ok(Json(migration_tables::add(&app, &name, body).await?))
}

/// Stops replicating one table: its capture triggers and function are removed from the source
/// and its state from the target; its rows on the target stay, and its changes still queued are
/// skipped. 404 for a table not in the migration; 409 `last_table` (remove the migration
/// instead), `operation_running`, `cut_over`.
#[utoipa::path(delete, path = "/api/v1/migrations/{name}/tables/{table}", operation_id = "remove_table", tag = "migrations",
    params(("name" = String, Path, description = "the migration's name"), ("table" = String, Path, description = "the table's unquoted `schema.table` name")),
    responses((status = 200, body = MigrationView, description = "the migration without the table"), AuthErrors, RoleErrors, NotFoundErrors, ConflictErrors, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn remove_table(
    State(app): State<AppState>,
    _caller: Authorized<Operator>,
    Path((name, table)): Path<(String, String)>,
) -> ViewResult {
    Ok(Json(migration_tables::remove(&app, &name, &table).await?))
}

/// Stops ticker, copy and apply; the source keeps capturing.
#[utoipa::path(post, path = "/api/v1/migrations/{name}/pause", operation_id = "pause_migration", tag = "migrations", params(("name" = String, Path, description = "the migration's name")),
    responses((status = 200, body = MigrationView, description = "the migration, in its new state"), AuthErrors, RoleErrors, NotFoundErrors, ConflictErrors, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn pause(
    State(app): State<AppState>,
    _caller: Authorized<Operator>,
    Path(name): Path<String>,
) -> ViewResult {
    Ok(Json(migrations::pause(&app, &name).await?))
}

/// Resumes a paused migration, applying what accumulated.
#[utoipa::path(post, path = "/api/v1/migrations/{name}/resume", operation_id = "resume_migration", tag = "migrations", params(("name" = String, Path, description = "the migration's name")),
    responses((status = 200, body = MigrationView, description = "the migration, in its new state"), AuthErrors, RoleErrors, NotFoundErrors, ConflictErrors, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn resume(
    State(app): State<AppState>,
    _caller: Authorized<Operator>,
    Path(name): Path<String>,
) -> ViewResult {
    Ok(Json(migrations::resume(&app, &name).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Required (`true`) to remove a cut-over migration: that lifts the freeze on its old
    /// server, which then takes writes again that the new server never sees.
    unfreeze_source: Option<bool>,
}

/// Stops the migration and drops what pgshift installed on both sides; copied rows stay. A
/// cut-over migration is removed only with `?unfreeze_source=true` (409
/// `unfreeze_source_required` otherwise): its old server becomes writable again.
#[utoipa::path(delete, path = "/api/v1/migrations/{name}", operation_id = "remove_migration", tag = "migrations", params(("name" = String, Path, description = "the migration's name"), RemoveQuery),
    responses((status = 204, description = "removed"), (status = 400, description = "`invalid_query`", body = ErrorBody), AuthErrors, RoleErrors, NotFoundErrors, ConflictErrors, DatabaseErrors),
    security(("bearer" = [])))]
pub async fn remove(
    State(app): State<AppState>,
    _caller: Authorized<Admin>,
    Path(name): Path<String>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    })?;
    migrations::remove(&app, &name, query.unfreeze_source.unwrap_or(false)).await?;
    Ok(StatusCode::NO_CONTENT)
}
