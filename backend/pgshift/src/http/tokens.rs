//! HTTP layer: `/api/v1/tokens`: issue, list and revoke bearer tokens (admins only).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Admin, Authorized};
use super::error::{AuthErrors, BodyErrors, NotFoundErrors, RoleErrors};
use super::json::ApiJson;
use super::{ApiError, AppState, Caller};
use crate::service::tokens::{self, IssuedToken, NewToken, TokenView};

/// Issues a token. The response is the only place the token itself ever appears.
#[utoipa::path(post, path = "/api/v1/tokens", operation_id = "issue_token", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = IssuedToken, description = "the token (shown only this once) and its record"), AuthErrors, RoleErrors, BodyErrors),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    _admin: Authorized<Admin>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    let issued = tokens::issue(app.store.as_ref(), &app.keys, body, &caller.0.sub).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// Every token issued through the API or `pgshift token create`, with its state.
#[utoipa::path(get, path = "/api/v1/tokens", operation_id = "list_tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenView>, description = "every recorded token, oldest first"), AuthErrors, RoleErrors),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<AppState>,
    _admin: Authorized<Admin>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    Ok(Json(tokens::list(app.store.as_ref()).await?))
}

/// Revokes a token: every instance sharing the metadata store refuses it from the next request.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", operation_id = "revoke_token", tag = "tokens",
    params(("id" = String, Path, description = "the token's id (its `jti`)")),
    responses((status = 204, description = "revoked"), AuthErrors, RoleErrors, NotFoundErrors),
    security(("bearer" = [])))]
pub async fn revoke(
    State(app): State<AppState>,
    _admin: Authorized<Admin>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    tokens::revoke(app.store.as_ref(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
