//! HTTP layer: `GET /metrics` (Prometheus / OpenMetrics text), `GET /healthz` and `GET /readyz`,
//! and the middleware that counts and times every HTTP request. What they report of the store and
//! the migrations comes from `service::monitoring`.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::error::ApiError;
use super::AppState;
use crate::engine::RuntimeState;
use crate::service::monitoring;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route pattern (`/api/v1/migrations/{name}`), never the raw path: bounded cardinality.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MigrationLabels {
    migration: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    migration: String,
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableStateLabels {
    migration: String,
    table: String,
    state: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// HTTP figures, kept for the life of the process.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
        }
    }
}

/// State of the routes in this module.
#[derive(Clone)]
pub struct MetricsState {
    pub app: AppState,
    pub http: HttpMetrics,
}

/// The method as a label value: the standard ones by name, anything else as `other`, so that
/// clients cannot make new series (every label value is kept for the life of the process).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts and times each request under its route pattern; requests that match no route are all
/// counted as `unmatched`, and unknown methods as `other`.
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Answers while the process runs.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations",
    responses((status = 200, description = "`ready`", content_type = "text/plain", body = String),
        (status = 503, description = "`not_ready`: the metadata store does not answer", body = super::error::ErrorBody)))]
/// Ready when the metadata store answers.
pub async fn readyz(State(state): State<MetricsState>) -> Result<&'static str, ApiError> {
    monitoring::ready(&state.app).await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check: metadata store unreachable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the metadata store does not answer",
        )
    })?;
    Ok("ready")
}

const TABLE_STATES: [&str; 5] = ["pending", "copying", "catching_up", "synced", "error"];

/// Per-migration and HTTP figures in the OpenMetrics text format (unauthenticated).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
        (status = 500, description = "`internal`", body = super::error::ErrorBody)))]
pub async fn metrics(State(state): State<MetricsState>) -> Result<Response, ApiError> {
    let migrations = monitoring::live_migrations(&state.app).await?;
    let mut registry = Registry::default();
    registry.register(
        "pgshift_http_requests",
        "HTTP requests by route and status",
        state.http.requests.clone(),
    );
    registry.register(
        "pgshift_http_request_duration_seconds",
        "HTTP request latency by route",
        state.http.latency.clone(),
    );
    let refused: Counter = Counter::default();
    refused.inc_by(state.app.unauthenticated.total());
    registry.register(
        "pgshift_http_unauthenticated_refusals",
        "API requests refused for want of a valid token (counted here, not recorded in the audit trail)",
        refused,
    );

    let lag = Family::<MigrationLabels, FloatGauge>::default();
    let pending = Family::<MigrationLabels, Gauge>::default();
    let applied = Family::<MigrationLabels, Gauge>::default();
    let running = Family::<MigrationLabels, Gauge>::default();
    let failing = Family::<MigrationLabels, Gauge>::default();
    let failures = Family::<MigrationLabels, Gauge>::default();
    let tick_age = Family::<MigrationLabels, FloatGauge>::default();
    let copied = Family::<TableLabels, Gauge>::default();
    let estimated = Family::<TableLabels, Gauge>::default();
    let table_state = Family::<TableStateLabels, Gauge>::default();
    let now = chrono::Utc::now();
    for migration in migrations {
        let m = MigrationLabels {
            migration: migration.name.clone(),
        };
        let status = migration.status;
        let is_running = status
            .as_ref()
            .is_some_and(|s| s.runtime != RuntimeState::Stopped);
        running.get_or_create(&m).set(i64::from(is_running));
        let Some(status) = status else { continue };
        failing
            .get_or_create(&m)
            .set(i64::from(status.runtime == RuntimeState::Retrying));
        failures
            .get_or_create(&m)
            .set(status.failed_attempts as i64);
        if let Some(v) = status.lag_seconds {
            lag.get_or_create(&m).set(v);
        }
        if let Some(v) = status.pending_events {
            pending.get_or_create(&m).set(v);
        }
        if let Some(v) = status.events_applied {
            applied.get_or_create(&m).set(v);
        }
        if let Some(t) = status.applied_tick_time {
            tick_age
                .get_or_create(&m)
                .set((now - t).num_milliseconds().max(0) as f64 / 1000.0);
        }
        for t in &status.tables {
            let labels = TableLabels {
                migration: migration.name.clone(),
                table: t.name.clone(),
            };
            copied.get_or_create(&labels).set(t.rows_copied);
            if let Some(e) = t.rows_estimated {
                estimated.get_or_create(&labels).set(e);
            }
            for s in TABLE_STATES {
                let labels = TableStateLabels {
                    migration: migration.name.clone(),
                    table: t.name.clone(),
                    state: s.into(),
                };
                table_state
                    .get_or_create(&labels)
                    .set(i64::from(t.state == s));
            }
        }
    }
    registry.register(
        "pgshift_migration_lag_seconds",
        "Seconds the target is behind the source (0 when nothing waits)",
        lag,
    );
    registry.register(
        "pgshift_migration_pending_events",
        "Change events captured on the source and not yet applied",
        pending,
    );
    registry.register(
        "pgshift_migration_events_applied",
        "Change events applied to the target since the migration started",
        applied,
    );
    registry.register(
        "pgshift_migration_running",
        "1 while this process runs the migration",
        running,
    );
    registry.register(
        "pgshift_migration_failing",
        "1 while the migration's last attempt failed and it is retrying",
        failing,
    );
    registry.register(
        "pgshift_migration_failed_attempts",
        "Failed attempts since this process started the migration",
        failures,
    );
    registry.register(
        "pgshift_migration_tick_age_seconds",
        "Age of the newest tick the target has applied",
        tick_age,
    );
    registry.register(
        "pgshift_table_rows_copied",
        "Rows the initial copy has written",
        copied,
    );
    registry.register(
        "pgshift_table_rows_estimated",
        "Rows the initial copy expects (planner estimate)",
        estimated,
    );
    registry.register(
        "pgshift_table_state",
        "1 for the table's current state",
        table_state,
    );

    let mut body = String::new();
    encode(&mut body, &registry).map_err(|e| {
        tracing::error!(error = %e, "encoding metrics");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
