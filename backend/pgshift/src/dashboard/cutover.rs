//! Dashboard layer: the cutover panel of a migration's page: the preflight checklist with each
//! gate's live verdict, the cutover form (operators), the steps of a running cutover with its Abort
//! button, and the result. Everything goes through `service::cutover` and `service::operations`, as
//! the JSON API does.
//!
//! How often the gates are checked: each check opens a connection to both servers and runs a few
//! catalog queries, so the checklist is loaded once with the page and then refreshed every 5 s
//! only for operators (who may press the button), only while the browser tab is visible (app.js
//! holds the poll back otherwise), and only while the migration runs with no cutover under way.
//! Viewers get a "Re-check" button instead, so a wall of read-only screens does not multiply the
//! load on the servers being migrated.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::audit::{self, Action};
use super::cutover_steps::{operation_view, OperationView};
use super::error::{render, PageError};
use super::session::SignedIn;
use crate::base::Role;

use crate::service::cutover::{self, CutoverRequest, Gate};
use crate::service::operations;
use crate::service::AppState;
use crate::store::{DesiredState, MigrationRecord, Operation, OperationState};

/// One gate of the checklist.
pub struct GateRow {
    pub name: &'static str,
    pub words: &'static str,
    pub passed: bool,
    pub reason: String,
}

/// The checklist: each gate, or why it could not be checked.
pub struct Gates {
    pub migration: String,
    pub rows: Vec<GateRow>,
    pub all_passed: bool,
    /// Why the gates could not be checked (a server unreachable, the migration not running).
    pub problem: Option<String>,
    /// Refresh every 5 s (operators while the migration runs), else on request.
    pub poll: bool,
    pub checked_at: String,
}

/// What the panel holds for this migration and this user.
pub struct Panel {
    pub migration: String,
    pub desired: &'static str,
    /// The running cutover, the one that finished it (when cut over), or the last attempt.
    pub operation: Option<OperationView>,
    /// Whether the checklist is shown (the migration runs and no cutover is under way).
    pub show_gates: bool,
    /// Whether this user sees the form (operator or above, the checklist shown).
    pub can_start: bool,
    pub can_abort: bool,
    /// The latest verification on demand, and whether this user may start one now.
    pub verify: Option<super::verify::VerifyView>,
    pub can_verify: bool,
}

#[derive(Template)]
#[template(path = "cutover_gates.html")]
struct GatesPartial {
    gates: Gates,
}

#[derive(Template)]
#[template(path = "cutover_progress.html")]
struct ProgressPartial {
    cutover: Panel,
    nav_csrf: String,
}

fn gate_words(name: &str) -> &'static str {
    match name {
        "running" => "The migration runs in this server",
        "tables_synced" => "Every table is synced",
        "lag" => "Lag is under the threshold",
        "apply_errors" => "No apply errors",
        "long_transactions" => "No long transaction on the source",
        "wraparound" => "No table due for an anti-wraparound vacuum on the source",
        "target_ready" => "Target triggers and foreign keys ready",
        "foreign_keys" => "No violated foreign key to or from tables outside the migration",
        "sequences" => "Sequences readable on both sides",
        "reverse_ready" => "Reverse replication can be armed",
        _ => "Other check",
    }
}

/// The cutover to show: a running one, else the latest real (not dry-run) one.
async fn current_operation(app: &AppState, name: &str) -> Result<Option<Operation>, PageError> {
    let ops = operations::list(app, name).await?;
    let mut cutovers = ops.into_iter().filter(|o| o.kind == "cutover");
    Ok(cutovers.find(|o| o.state == OperationState::Running || o.request["dry_run"] != true))
}

/// The panel for the migration's page.
pub async fn panel(
    app: &AppState,
    who: &SignedIn,
    record: &MigrationRecord,
) -> Result<Panel, PageError> {
    let op = current_operation(app, &record.name).await?;
    let verify = super::verify::latest(app, &record.name).await?;
    let verifying = verify.as_ref().is_some_and(|v| v.running);
    let running = op
        .as_ref()
        .is_some_and(|o| o.state == OperationState::Running);
    let show_gates = record.desired_state == DesiredState::Running && !running;
    Ok(Panel {
        migration: record.name.clone(),
        desired: record.desired_state.as_str(),
        operation: op.as_ref().map(operation_view),
        show_gates,
        can_start: show_gates && who.can_operate(),
        can_abort: running && who.can_operate(),
        can_verify: show_gates && !verifying && who.can_operate(),
        verify,
    })
}

#[derive(Deserialize)]
pub struct GatesQuery {
    /// The form's fields, so the checklist judges what the button would send.
    #[serde(default)]
    max_lag_seconds: String,
    #[serde(default)]
    reverse: String,
}

fn parse_max_lag(s: &str) -> Result<Option<f64>, PageError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<f64>().map(Some).map_err(|_| {
        PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("The maximum lag must be a number of seconds, not {s:?}."),
        )
    })
}

/// `GET /ui/migrations/{name}/cutover/gates`: the checklist, checked now.
pub async fn gates(
    State(app): State<AppState>,
    who: SignedIn,
    Path(name): Path<String>,
    Query(q): Query<GatesQuery>,
) -> Result<Response, PageError> {
    let record = crate::service::migrations::find(&app, &name).await?;
    let checked = match parse_max_lag(&q.max_lag_seconds) {
        Ok(max_lag) => cutover::preflight(&app, &name, max_lag, !q.reverse.is_empty())
            .await
            .map_err(PageError::from),
        Err(e) => Err(e),
    };
    let (rows, problem): (Vec<Gate>, _) = match checked {
        Ok(g) => (g, None),
        Err(PageError::Page { message, .. }) => (Vec::new(), Some(message)),
        Err(e) => return Err(e),
    };
    let rows: Vec<GateRow> = rows
        .into_iter()
        .map(|g| GateRow {
            name: g.name,
            words: gate_words(g.name),
            passed: g.passed,
            reason: g.reason,
        })
        .collect();
    let running = current_operation(&app, &name)
        .await?
        .is_some_and(|o| o.state == OperationState::Running);
    render(&GatesPartial {
        gates: Gates {
            migration: name,
            all_passed: problem.is_none() && !rows.is_empty() && rows.iter().all(|g| g.passed),
            rows,
            problem,
            poll: who.can_operate() && record.desired_state == DesiredState::Running && !running,
            checked_at: chrono::Utc::now().format("%H:%M:%S UTC").to_string(),
        },
    })
}

#[derive(Deserialize)]
pub struct ProgressQuery {
    /// `running` when polled by the steps of a running cutover.
    #[serde(default)]
    was: String,
}

/// `GET /ui/migrations/{name}/cutover/progress`: the steps, polled every second while the
/// cutover runs. When it has just ended, htmx reloads the whole page (`HX-Refresh`), so the
/// state, the actions and the checklist all follow.
pub async fn progress(
    State(app): State<AppState>,
    who: SignedIn,
    Path(name): Path<String>,
    Query(q): Query<ProgressQuery>,
) -> Result<Response, PageError> {
    let record = crate::service::migrations::find(&app, &name).await?;
    let panel = panel(&app, &who, &record).await?;
    let ended = q.was == "running" && !panel.operation.as_ref().is_some_and(|o| o.running);
    let mut response = render(&ProgressPartial {
        cutover: panel,
        nav_csrf: who.session.csrf_token.clone(),
    })?;
    if ended {
        response
            .headers_mut()
            .insert("HX-Refresh", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[derive(Deserialize)]
pub struct StartForm {
    #[serde(default)]
    csrf: String,
    /// The migration's name, typed again.
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    max_lag_seconds: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    reverse: String,
}

/// `POST /ui/migrations/{name}/cutover`: starts the cutover (operators), after the name typed
/// again matches; the operation's first step runs the gates again.
pub async fn start(
    State(app): State<AppState>,
    who: SignedIn,
    Path(name): Path<String>,
    Form(f): Form<StartForm>,
) -> Result<Response, PageError> {
    who.require(Role::Operator)?;
    who.check_csrf(&f.csrf)?;
    let result = async {
        if f.confirm.trim() != name {
            return Err(PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "To cut over, type the migration's name ({name}) in the confirmation field."
                ),
            ));
        }
        let req = CutoverRequest {
            max_lag_seconds: parse_max_lag(&f.max_lag_seconds)?,
            reverse: Some(!f.reverse.is_empty()),
            ..CutoverRequest::default()
        };
        cutover::start_cutover(&app, &name, req, &who.user.name)
            .await
            .map_err(PageError::from)
    }
    .await;
    let what = Action {
        action: "migration.cutover",
        route: "/ui/migrations/{name}/cutover",
        kind: "migration",
        name: &name,
    };
    audit::record(&app, &who, what, result).await?;
    Ok(Redirect::to(&format!("/ui/migrations/{name}#cutover")).into_response())
}

#[derive(Deserialize)]
pub struct AbortForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /ui/migrations/{name}/cutover/abort`: stops the running cutover; the source takes
/// writes again and the migration runs on.
pub async fn abort(
    State(app): State<AppState>,
    who: SignedIn,
    Path(name): Path<String>,
    Form(f): Form<AbortForm>,
) -> Result<Response, PageError> {
    who.require(Role::Operator)?;
    who.check_csrf(&f.csrf)?;
    let result = cutover::abort(&app, &name).await.map_err(PageError::from);
    let what = Action {
        action: "migration.abort",
        route: "/ui/migrations/{name}/cutover/abort",
        kind: "migration",
        name: &name,
    };
    audit::record(&app, &who, what, result).await?;
    Ok(Redirect::to(&format!("/ui/migrations/{name}#cutover")).into_response())
}
