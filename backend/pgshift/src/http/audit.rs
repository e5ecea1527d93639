//! HTTP layer: the API's side of the audit trail: the middleware that records every
//! state-changing API request (who, what, when, from where, with what result) and
//! `GET /api/v1/audit`, which lists the entries, both through `service::audit`.
//! Request bodies are never read here: they may hold DSNs with passwords.

use std::net::{IpAddr, SocketAddr};

use axum::body::{Body, HttpBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{
    ConnectInfo, FromRequestParts, MatchedPath, Query, RawPathParams, Request, State,
};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use chrono::Utc;
use serde::Deserialize;

use super::error::{AuthErrors, ErrorBody};
use super::{ApiError, Caller};
use crate::service::{audit, App, AppState};
use crate::store::{AuditEntry, NewAuditEntry};

/// Response bodies larger than this are not read for an error code or a name.
const MAX_INSPECTED_BODY: u64 = 64 * 1024;

fn is_state_changing(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Records each authenticated POST, PUT, PATCH and DELETE once its response is known. A request
/// without a valid token is not recorded, whatever its method: every 401 is counted
/// ([`audit::Unauthenticated`]) instead, so anonymous clients cannot grow the store or crowd
/// a migration's trail. A failure to record is logged and the response returned all the same.
pub async fn record(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let at = Utc::now();
    let (mut parts, body) = request.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    if !is_state_changing(&parts.method) {
        return unrecorded(&app, route, parts, body, next).await;
    }
    // Authenticated here, before the handler (which reuses the result), so that an anonymous
    // request is known as such before anything of it is kept.
    let caller = match Caller::from_request_parts(&mut parts, &app).await {
        Ok(caller) => Some(caller),
        Err(refusal) if refusal.status == StatusCode::UNAUTHORIZED => {
            return unrecorded(&app, route, parts, body, next).await;
        }
        // The token could not be checked (the store failed): recorded as anonymous.
        Err(_) => None,
    };
    let method = parts.method.to_string();
    // Cut before it is kept: the path may carry a name of any length.
    let path_name = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(params) => params
            .iter()
            .find(|(key, _)| *key == "name" || *key == "id")
            .map(|(_, value)| audit::bounded_name(value)),
        Err(_) => None,
    };
    let client_ip = client_addr(&app, &parts).map(|ip| ip.to_string());
    let response = next.run(Request::from_parts(parts, body)).await;

    let status = response.status();
    let kind = route.as_deref().and_then(object_kind);
    // A POST on a collection creates the object: its name is in the response, not the path.
    let creates = kind.is_some() && path_name.is_none() && method == Method::POST.as_str();
    // The body is read only for errors (their code) and for creations (the new object's name).
    let (response, body) =
        if status.is_client_error() || status.is_server_error() || (creates && status.is_success())
        {
            inspect_body(response).await
        } else {
            (response, None)
        };
    let error_code = if status.is_client_error() || status.is_server_error() {
        body.as_ref()
            .and_then(|b| b["error"]["code"].as_str())
            .map(str::to_string)
    } else {
        None
    };
    let object_name = path_name.or_else(|| {
        body.as_ref()
            .filter(|_| creates && status.is_success())
            .and_then(|b| b["name"].as_str().or_else(|| b["id"].as_str()))
            .map(str::to_string)
    });
    let entry = NewAuditEntry {
        at,
        actor: caller
            .as_ref()
            .map_or_else(|| "anonymous".to_string(), |c| c.0.sub.clone()),
        token_id: caller.as_ref().map(|c| c.0.jti.clone()),
        role: caller.as_ref().map(|c| c.0.role.to_string()),
        action: action(&method, route.as_deref(), kind),
        method,
        route: route.unwrap_or_else(|| "unmatched".into()),
        object_kind: kind.map(str::to_string),
        object_name,
        client_ip,
        status: status.as_u16(),
        error_code,
    };
    audit::record(&app, &entry).await;
    response
}

/// Runs a request that is not recorded (a read, or one without a valid token), counting it when
/// it is refused for want of a valid token.
async fn unrecorded(
    app: &AppState,
    route: Option<String>,
    parts: axum::http::request::Parts,
    body: Body,
    next: Next,
) -> Response {
    let client = client_addr(app, &parts);
    let response = next.run(Request::from_parts(parts, body)).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        app.unauthenticated
            .refused(route.as_deref().unwrap_or("unmatched"), client);
    }
    response
}

/// Where a request came from: its peer, or the client a trusted proxy names.
fn client_addr(app: &App, parts: &axum::http::request::Parts) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    app.trusted_proxies.client_addr(peer, &parts.headers)
}

/// `cluster` or `migration` for routes under `/api/v1/clusters` or `/api/v1/migrations`.
fn object_kind(route: &str) -> Option<&'static str> {
    let rest = route.strip_prefix("/api/v1/")?;
    match rest.split('/').next()? {
        "clusters" => Some("cluster"),
        "migrations" => Some("migration"),
        "tokens" => Some("token"),
        "operations" => Some("operation"),
        _ => None,
    }
}

/// `cluster.create`, `migration.start`, `migration.preview`, …: the kind, then the route's last
/// literal segment after the collection, or what the method does.
fn action(method: &str, route: Option<&str>, kind: Option<&str>) -> String {
    let (Some(route), Some(kind)) = (route, kind) else {
        return format!("{}.unknown", kind.unwrap_or("api"));
    };
    let segments: Vec<&str> = route.trim_start_matches("/api/v1/").split('/').collect();
    // A migration's table set: `migration.tables.add` and `migration.tables.remove` (the
    // general rules would say `migration.tables` and, wrongly, `migration.delete`).
    match (method, &segments[..]) {
        ("POST", [_, _, "tables"]) => return format!("{kind}.tables.add"),
        ("DELETE", [_, _, "tables", _]) => return format!("{kind}.tables.remove"),
        _ => {}
    }
    if segments.len() > 1 && !segments[segments.len() - 1].starts_with('{') {
        return format!("{kind}.{}", segments[segments.len() - 1]);
    }
    let verb = match method {
        "POST" => "create",
        "PUT" | "PATCH" => "update",
        "DELETE" => "delete",
        other => return format!("{kind}.{}", other.to_ascii_lowercase()),
    };
    format!("{kind}.{verb}")
}

/// Reads a small response body as JSON and rebuilds the response around the same bytes.
async fn inspect_body(response: Response) -> (Response, Option<serde_json::Value>) {
    let small = response
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MAX_INSPECTED_BODY);
    if !small {
        return (response, None);
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, MAX_INSPECTED_BODY as usize).await {
        Ok(bytes) => {
            let value = serde_json::from_slice(&bytes).ok();
            (Response::from_parts(parts, Body::from(bytes)), value)
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read a response body for the audit trail");
            let mut failed = Response::from_parts(parts, Body::empty());
            *failed.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            (failed, None)
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries about this migration.
    migration: Option<String>,
    /// Only entries about this cluster.
    cluster: Option<String>,
    /// At most this many entries (default 100, at most 1000).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", operation_id = "list_audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>, description = "matching entries, newest first"),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        AuthErrors),
    security(("bearer" = [])))]
/// `GET /api/v1/audit?migration=&cluster=&limit=`: newest first; any authenticated role.
pub async fn list(
    State(app): State<AppState>,
    _caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    })?;
    let entries = audit::list(&app, query.migration, query.cluster, query.limit).await?;
    Ok(Json(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_kinds() {
        let cases = [
            ("POST", "/api/v1/clusters", "cluster.create"),
            ("DELETE", "/api/v1/clusters/{name}", "cluster.delete"),
            ("POST", "/api/v1/migrations", "migration.create"),
            ("DELETE", "/api/v1/migrations/{name}", "migration.delete"),
            ("POST", "/api/v1/migrations/{name}/start", "migration.start"),
            ("POST", "/api/v1/migrations/preview", "migration.preview"),
            ("PUT", "/api/v1/migrations/{name}", "migration.update"),
            (
                "POST",
                "/api/v1/migrations/{name}/tables",
                "migration.tables.add",
            ),
            (
                "DELETE",
                "/api/v1/migrations/{name}/tables/{table}",
                "migration.tables.remove",
            ),
            (
                "POST",
                "/api/v1/migrations/{name}/tables/{table}/resync",
                "migration.resync",
            ),
        ];
        for (method, route, expected) in cases {
            let kind = object_kind(route);
            assert_eq!(
                action(method, Some(route), kind),
                expected,
                "{method} {route}"
            );
        }
        assert_eq!(object_kind("/api/v1/audit"), None);
        assert_eq!(action("POST", None, None), "api.unknown");
    }
}
