//! The HTTP layer: the REST API under `/api/v1` (bearer tokens), health checks and metrics.
//! A sibling of the dashboard: both call only the service layer, and `app.rs` puts their routes
//! together.

mod audit;
mod auth;
mod clusters;
mod cutover;
mod ddl;
mod error;
mod json;
mod metrics;
mod migrations;
mod openapi;
mod operations;
mod tokens;

use axum::routing::{get, post};
use axum::Router;

pub use auth::Caller;
pub use error::ApiError;
pub use metrics::{healthz, track, HttpMetrics};
pub use openapi::ApiDoc;

use crate::service::AppState;

/// The REST API, nested under `/api/v1` by the application's router; every state-changing
/// request is recorded in the audit trail (see audit.rs).
pub fn api(app: AppState) -> Router<AppState> {
    Router::new()
        .route("/clusters", post(clusters::create).get(clusters::list))
        .route(
            "/clusters/{name}",
            get(clusters::get).delete(clusters::remove),
        )
        .route(
            "/migrations",
            post(migrations::create).get(migrations::list),
        )
        // A migration cannot be named `preview` (see service::migrations::create).
        .route("/migrations/preview", post(migrations::preview))
        .route(
            "/migrations/{name}",
            get(migrations::get).delete(migrations::remove),
        )
        .route("/migrations/{name}/start", post(migrations::start))
        .route("/migrations/{name}/pause", post(migrations::pause))
        .route("/migrations/{name}/resume", post(migrations::resume))
        .route("/migrations/{name}/tables", post(migrations::add_tables))
        .route(
            "/migrations/{name}/tables/{table}",
            axum::routing::delete(migrations::remove_table),
        )
        .route(
            "/migrations/{name}/tables/{table}/resync",
            post(migrations::resync_table),
        )
        .route("/migrations/{name}/cutover", post(cutover::start))
        .route("/migrations/{name}/cutover/abort", post(cutover::abort))
        .route("/migrations/{name}/verify", post(cutover::verify))
        .route("/migrations/{name}/ddl", post(ddl::run))
        .route("/migrations/{name}/unfreeze", post(cutover::unfreeze))
        .route("/migrations/{name}/operations", get(operations::list))
        .route("/operations/{id}", get(operations::get))
        .route("/operations/{id}/abort", post(operations::abort))
        .route("/audit", get(audit::list))
        .route("/tokens", post(tokens::create).get(tokens::list))
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/openapi.json", get(openapi::document))
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(app, audit::record))
}

/// `/readyz` and `/metrics`, and the HTTP figures that [`track`] (a layer over every route)
/// fills and `/metrics` reports.
pub fn operations(app: AppState) -> (Router, HttpMetrics) {
    let state = metrics::MetricsState {
        app,
        http: HttpMetrics::default(),
    };
    let http = state.http.clone();
    let router = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/readyz", get(metrics::readyz))
        .with_state(state);
    (router, http)
}
