//! HTTP layer: the one place errors become API responses, `{"error":{"code":"…","message":"…"}}`,
//! and the error responses the OpenAPI document lists for each route. Which status and code a
//! failure gets is decided once in the service layer ([`Answer`]), for the dashboard too.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use crate::engine::EngineError;
use crate::service::{Answer, ServiceError};
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        response
    }
}

impl From<Answer> for ApiError {
    fn from(a: Answer) -> Self {
        ApiError::new(a.status, a.code, a.message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        Answer::from(err).into()
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        Answer::from(err).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        Answer::from(err).into()
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route")
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code for programs, a message for people saying what to fix.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable, e.g. `not_found`, `duplicate_name`, `unreachable`.
    pub code: String,
    pub message: String,
}

/// Errors of every authenticated route.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum AuthErrors {
    /// `unauthorized`: the token is missing, malformed, expired, revoked, unsigned (`alg: none`)
    /// or issued by another server.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `internal`: a bug; the server log has the details.
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// Routes needing more than the viewer role.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum RoleErrors {
    /// `forbidden`: the token's role is too low; the message names the role needed.
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// Routes naming a cluster, migration or token in the path.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum NotFoundErrors {
    /// `not_found`: no such cluster, migration or token.
    #[response(status = 404)]
    NotFound(ErrorBody),
}

/// Routes reading a JSON body.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// `malformed_json`: the body is not JSON.
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// `unsupported_media_type`: send `Content-Type: application/json`.
    #[response(status = 415)]
    MediaType(ErrorBody),
    /// `invalid_body` (fields missing, unknown or of the wrong type) or a check that failed:
    /// `invalid_name`, `invalid_database`, `invalid_dsn`, `unknown_cluster`, `same_database`,
    /// `unreachable`, `authentication_failed`, `database_not_found`, `missing_privilege`,
    /// `no_tables`, `invalid_pattern`, `pattern_matches_nothing`,
    /// `target_table_missing`, `target_columns_differ`, `target_key_differs`, `invalid_subject`,
    /// `invalid_ttl`, `invalid_webhook_url`, `webhook_not_allowed`, `key_collation_differs`,
    /// `foreign_partition`, `already_in_migration` (adding tables: a pattern selects only tables the migration has).
    #[response(status = 422)]
    Invalid(ErrorBody),
}

/// Routes whose request can clash with the stored state.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ConflictErrors {
    /// `duplicate_name`, `cluster_in_use`, `in_use`, `target_not_empty`, `paused` (resume a
    /// paused migration instead of starting it), `not_started`, `tables_busy` (removing a
    /// migration: other sessions held the source tables too long; the message names them),
    /// `operation_running` (starting, pausing, resuming, removing or resyncing while a cutover,
    /// a verification or a resync runs on the migration), `cut_over`, `last_table` (removing the only table of a
    /// migration: remove the migration instead), `tables_changed`.
    #[response(status = 409)]
    Conflict(ErrorBody),
}

/// Routes that talk to the migrated PostgreSQL servers.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum DatabaseErrors {
    /// `database_error`: a PostgreSQL server failed while serving the request.
    #[response(status = 502)]
    Database(ErrorBody),
    /// `shutting_down`: the server is stopping.
    #[response(status = 503)]
    ShuttingDown(ErrorBody),
}

/// Routes starting or stopping a cutover or verification.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum OperationConflicts {
    /// `not_running` (start or resume the migration first), `cut_over` (already cut over),
    /// `not_synced` (verify needs every table synced), `lagging` (verify while the target is
    /// further behind than `max_lag_seconds`), `operation_running` (one operation per
    /// migration at a time), `operation_not_running` (nothing to abort), `duplicate_name` (the
    /// reverse migration's name is taken).
    #[response(status = 409)]
    Conflict(ErrorBody),
}
