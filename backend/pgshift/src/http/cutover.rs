//! `/api/v1/migrations/{name}/cutover`, `/cutover/abort` and `/verify`: each starts (or stops)
//! an operation; poll it at `/api/v1/operations/{id}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::{Authorized, Operator};
use super::json::ApiJson;
use super::{ApiError, AppState, Caller};
use crate::service::cutover::{self, CutoverRequest, VerifyRequest};
use crate::store::Operation;

type Accepted = Result<(StatusCode, Json<Operation>), ApiError>;

pub async fn start(
    State(app): State<AppState>,
    _role: Authorized<Operator>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CutoverRequest>,
) -> Accepted {
    let op = cutover::start_cutover(&app, &name, body, &caller.0.sub).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

pub async fn abort(
    State(app): State<AppState>,
    _role: Authorized<Operator>,
    Path(name): Path<String>,
) -> Accepted {
    let op = cutover::abort(&app, &name).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

pub async fn verify(
    State(app): State<AppState>,
    _role: Authorized<Operator>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<VerifyRequest>,
) -> Accepted {
    let op = cutover::start_verify(&app, &name, body, &caller.0.sub).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}
