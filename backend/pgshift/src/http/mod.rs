//! The HTTP layer: the REST API under `/api/v1` (bearer tokens), health checks and metrics.

mod audit;
mod auth;
mod clusters;
mod cutover;
mod error;
mod json;
mod metrics;
mod migrations;
mod openapi;
mod operations;
mod tokens;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

pub use audit::client_addr;
pub use auth::Caller;
pub use error::ApiError;
pub use openapi::ApiDoc;

use crate::service::App;

/// The state every handler receives.
pub type AppState = Arc<App>;

pub fn router(app: AppState) -> Router {
    let api = Router::new()
        .route("/clusters", post(clusters::create).get(clusters::list))
        .route(
            "/clusters/{name}",
            get(clusters::get).delete(clusters::remove),
        )
        .route(
            "/migrations",
            post(migrations::create).get(migrations::list),
        )
        .route(
            "/migrations/{name}",
            get(migrations::get).delete(migrations::remove),
        )
        .route("/migrations/{name}/start", post(migrations::start))
        .route("/migrations/{name}/pause", post(migrations::pause))
        .route("/migrations/{name}/resume", post(migrations::resume))
        .route(
            "/migrations/{name}/tables/{table}/resync",
            post(migrations::resync_table),
        )
        .route("/migrations/{name}/cutover", post(cutover::start))
        .route("/migrations/{name}/cutover/abort", post(cutover::abort))
        .route("/migrations/{name}/verify", post(cutover::verify))
        .route("/migrations/{name}/operations", get(operations::list))
        .route("/operations/{id}", get(operations::get))
        .route("/operations/{id}/abort", post(operations::abort))
        .route("/audit", get(audit::list))
        .route("/tokens", post(tokens::create).get(tokens::list))
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/openapi.json", get(openapi::document))
        .fallback(error::not_found)
        // Records every POST, PUT, PATCH and DELETE under /api/v1 (see audit.rs).
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            audit::record,
        ));
    let ops = metrics::MetricsState {
        app: app.clone(),
        http: metrics::HttpMetrics::default(),
    };
    let http_metrics = ops.http.clone();
    let ops = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/readyz", get(metrics::readyz))
        .with_state(ops);
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(metrics::healthz))
        .merge(crate::dashboard::router())
        .with_state(app)
        .merge(ops)
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            metrics::track,
        ))
        .layer(RequestBodyLimitLayer::new(1024 * 1024))
        .layer(TraceLayer::new_for_http())
}
