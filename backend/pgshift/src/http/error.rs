//! The one place errors become HTTP responses: `{"error":{"code":"…","message":"…"}}`.
//! Anything the caller can fix is a 4xx with words they can act on; internal detail is logged,
//! never sent.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::engine::EngineError;
use crate::service::ServiceError;
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

    fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
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

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let unprocessable = |code, err: &EngineError| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, err.to_string())
        };
        match &err {
            EngineError::InvalidDsn(_) => unprocessable("invalid_dsn", &err),
            EngineError::Unreachable { .. } => unprocessable("unreachable", &err),
            EngineError::AuthenticationFailed { .. } => {
                unprocessable("authentication_failed", &err)
            }
            EngineError::DatabaseMissing { .. } => unprocessable("database_not_found", &err),
            EngineError::MissingPrivilege(_) => unprocessable("missing_privilege", &err),
            EngineError::Invalid {
                code: "target_not_empty",
                ..
            } => ApiError::new(StatusCode::CONFLICT, "target_not_empty", err.to_string()),
            EngineError::Invalid { code, .. } => unprocessable(code, &err),
            EngineError::OnTable { .. } => match err {
                EngineError::OnTable { source, .. } => ApiError::from(*source),
                _ => ApiError::internal(&"error classification"),
            },
            EngineError::Database { context, source } => {
                // The server's own message stays in the log: it can carry data values.
                tracing::warn!(%context, error = %source, "database error while serving a request");
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "database_error",
                    format!("a PostgreSQL server returned an error while {context}; the pgshift log has the details"),
                )
            }
            EngineError::Busy(_) => {
                ApiError::new(StatusCode::CONFLICT, "tables_busy", err.to_string())
            }
            // An outage of pgshift's own store: a 5xx, detail logged (see `From<StoreError>`).
            EngineError::Store(_) => match err {
                EngineError::Store(e) => ApiError::from(e),
                _ => ApiError::internal(&"error classification"),
            },
            EngineError::Cancelled => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Duplicate(what) => ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_name",
                format!("{what} already exists"),
            ),
            StoreError::InUse(by) => ApiError::new(
                StatusCode::CONFLICT,
                "in_use",
                format!("still used by {by}"),
            ),
            other => ApiError::internal(&other),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            ServiceError::Invalid { code, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            ServiceError::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            ServiceError::Engine(e) => e.into(),
            ServiceError::Store(e) => e.into(),
        }
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route")
}
