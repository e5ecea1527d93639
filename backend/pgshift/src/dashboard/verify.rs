//! Dashboard layer: verification on demand from the cutover panel: an operator starts
//! `service::cutover:: start_verify` (as `POST /api/v1/migrations/{name}/verify` does), and the
//! panel shows each table's verdict, `match`, `differs` or `not_verified` (with the reason),
//! polled while the comparison runs.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::audit::{self, Action};
use super::error::{render, PageError};
use super::session::SignedIn;
use crate::base::Role;
use crate::service::cutover::{self, VerifyRequest};
use crate::service::operations;
use crate::service::AppState;
use crate::store::{Operation, OperationState};

/// One table's verdict.
pub struct VerdictRow {
    pub table: String,
    /// `match`, `differs` or `not_verified`.
    pub state: String,
    pub source_rows: String,
    pub target_rows: String,
    pub ranges: usize,
    /// Where the table's definitions differ (a column on one side only, a type), or why it was
    /// not verified.
    pub differences: Vec<String>,
}

/// The latest verification.
pub struct VerifyView {
    pub state: &'static str,
    pub running: bool,
    pub requested_by: String,
    pub started: String,
    pub rows: Vec<VerdictRow>,
    pub differs: bool,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "cutover_verify.html")]
struct VerifyPartial {
    verify: Option<VerifyView>,
    migration: String,
}

fn view(op: &Operation) -> VerifyView {
    let result = op.result.as_ref();
    // After a repair (API only), the tables compared again are the ones that count.
    let tables = result
        .and_then(|r| r.get("after_repair").or_else(|| r.get("tables")))
        .and_then(|t| t.as_array())
        .cloned()
        .unwrap_or_default();
    let count = |v: &serde_json::Value| {
        v.as_i64()
            .map_or_else(|| "–".into(), super::view::thousands)
    };
    VerifyView {
        state: op.state.as_str(),
        running: op.state == OperationState::Running,
        requested_by: op.requested_by.clone(),
        started: op.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        rows: tables
            .iter()
            .map(|t| VerdictRow {
                table: t["table"].as_str().unwrap_or("").to_string(),
                state: t["state"].as_str().unwrap_or("").to_string(),
                source_rows: count(&t["source_rows"]),
                target_rows: count(&t["target_rows"]),
                ranges: t["differing_ranges"].as_array().map_or(0, Vec::len),
                differences: t["differences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(Some(&t["error"]))
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
            })
            .collect(),
        differs: result.is_some_and(|r| r["differs"] == true),
        error: op.error.clone(),
    }
}

/// The migration's latest verification, if any.
pub async fn latest(app: &AppState, name: &str) -> Result<Option<VerifyView>, PageError> {
    Ok(operations::list(app, name)
        .await?
        .iter()
        .find(|o| o.kind == "verify")
        .map(view))
}

/// `GET /ui/migrations/{name}/verify`: the verdicts, polled while the comparison runs.
pub async fn fragment(
    State(app): State<AppState>,
    _who: SignedIn,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    crate::service::migrations::find(&app, &name).await?;
    render(&VerifyPartial {
        verify: latest(&app, &name).await?,
        migration: name,
    })
}

#[derive(Deserialize)]
pub struct VerifyForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/migrations/{name}/verify`: compares source and target now (operators).
pub async fn start(
    State(app): State<AppState>,
    who: SignedIn,
    Path(name): Path<String>,
    Form(f): Form<VerifyForm>,
) -> Result<Response, PageError> {
    who.require(Role::Operator)?;
    who.check_csrf(&f.csrf)?;
    let result = cutover::start_verify(&app, &name, VerifyRequest::default(), &who.user.name)
        .await
        .map_err(PageError::from);
    let what = Action {
        action: "migration.verify",
        route: "/ui/migrations/{name}/verify",
        kind: "migration",
        name: &name,
    };
    audit::record(&app, &who, what, result).await?;
    Ok(Redirect::to(&format!("/ui/migrations/{name}#verify")).into_response())
}
