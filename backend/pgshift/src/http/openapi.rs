//! The OpenAPI 3 document at `GET /api/v1/openapi.json`, generated from the handlers'
//! `#[utoipa::path]` annotations and the JSON types' `ToSchema` derives, so it cannot drift from
//! the code. A new route is one annotation on its handler and one line in `paths(...)` below;
//! tests/openapi.rs fails for any route the router serves that the document leaves out.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use super::{audit, clusters, cutover, metrics, migrations, operations, tokens};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pgshift",
        description = "Move live PostgreSQL databases between servers. Every /api/v1 route but this document needs `Authorization: Bearer <token>`; roles are viewer < operator < admin. Every error is `{\"error\":{\"code\":\"…\",\"message\":\"…\"}}`."
    ),
    paths(
        clusters::create,
        clusters::list,
        clusters::get,
        clusters::remove,
        migrations::create,
        migrations::list,
        migrations::get,
        migrations::start,
        migrations::pause,
        migrations::resume,
        migrations::resync_table,
        migrations::remove,
        cutover::start,
        cutover::abort,
        cutover::verify,
        operations::list,
        operations::get,
        operations::abort,
        audit::list,
        tokens::create,
        tokens::list,
        tokens::revoke,
        document,
        metrics::healthz,
        metrics::readyz,
        metrics::metrics,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "clusters", description = "PostgreSQL servers pgshift can reach"),
        (name = "migrations", description = "Moving one database to another server"),
        (name = "cutover", description = "Cutover and verification, run as operations to poll"),
        (name = "audit", description = "Every change: who, what, when, from where, result"),
        (name = "tokens", description = "Bearer tokens: issue, list, revoke (admin)"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// `GET /api/v1/openapi.json`: this document. Needs no token: it holds no data.
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi", tag = "operations",
    responses((status = 200, description = "the OpenAPI 3 document", content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Declares the bearer scheme the routes' `security(("bearer" = []))` refers to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "a token from `pgshift token create` or POST /api/v1/tokens",
                    ))
                    .build(),
            ),
        );
    }
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
    /// `no_tables`, `invalid_pattern`, `pattern_matches_nothing`, `no_primary_key`,
    /// `target_table_missing`, `target_columns_differ`, `target_key_differs`, `invalid_subject`,
    /// `invalid_ttl`, `invalid_webhook_url`, `webhook_not_allowed`.
    #[response(status = 422)]
    Invalid(ErrorBody),
}

/// Routes whose request can clash with the stored state.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ConflictErrors {
    /// `duplicate_name`, `cluster_in_use`, `in_use`, `target_not_empty`, `paused` (resume a
    /// paused migration instead of starting it), `not_started`, `tables_busy` (removing a
    /// migration: other sessions held the source tables too long; the message names them).
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
    /// `not_synced` (verify needs every table synced), `operation_running` (one operation per
    /// migration at a time), `operation_not_running` (nothing to abort), `duplicate_name` (the
    /// reverse migration's name is taken).
    #[response(status = 409)]
    Conflict(ErrorBody),
}
