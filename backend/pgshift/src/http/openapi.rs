//! HTTP layer: the OpenAPI 3 document at `GET /api/v1/openapi.json`, generated from the handlers'
//! `#[utoipa::path]` annotations and the JSON types' `ToSchema` derives, so it cannot drift from
//! the code. A new route is one annotation on its handler and one line in `paths(...)` below;
//! tests/openapi.rs fails for any route the router serves that the document leaves out.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit, clusters, cutover, ddl, metrics, migrations, operations, tokens};

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
        migrations::preview,
        migrations::list,
        migrations::get,
        migrations::start,
        migrations::pause,
        migrations::resume,
        migrations::resync_table,
        ddl::run,
        migrations::add_tables,
        migrations::remove_table,
        migrations::remove,
        cutover::start,
        cutover::abort,
        cutover::verify,
        cutover::unfreeze,
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
