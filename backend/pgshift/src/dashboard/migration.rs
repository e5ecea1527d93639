//! Dashboard layer: a migration's page: live figures and tables (a fragment polled every 2 s), the
//! lag chart, the actions the user's role allows, and this migration's audit trail.

use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Form, Json};
use serde::Deserialize;

use super::audit::Action;
use super::error::{render, PageError};
use super::form::{self, ActionForm};
use super::session::SignedIn;
use super::view::{self, MigrationRow, Nav, Progress};
use crate::base::Role;
use crate::engine::special::SpecialObject;
use crate::service::lag_history::LagSeries;
use crate::service::migration_tables;
use crate::service::migrations::{self, MigrationView};
use crate::service::AppState;
use crate::store::{AuditEntry, DesiredState, MigrationRecord};

/// One table's row on the page.
pub struct TableRow {
    pub name: String,
    /// How rows are identified: `primary key`, `unique index <name>` or `whole row`.
    pub identity: String,
    pub state: String,
    pub state_words: &'static str,
    pub progress: Progress,
    /// While copying: the time left at the last minute's rate.
    pub eta: Option<String>,
    pub error: Option<String>,
    /// Objects of the table's schema pgshift has still to build on the target.
    pub objects_pending: Vec<String>,
    /// Objects that could not be built: the object, its statement and the error.
    pub objects_failed: Vec<crate::engine::schema::ObjectFailure>,
}

/// The live part: figures, error and tables.
pub struct Live {
    pub row: MigrationRow,
    pub events_applied: String,
    pub throughput: String,
    pub last_tick: String,
    pub applied_tick: String,
    pub tables: Vec<TableRow>,
    /// Whether to show the per-table Resync links (to a confirmation page): only to operators,
    /// while the migration runs.
    pub can_resync: bool,
    /// Whether to show the per-table "Stop replicating" links: to operators, until the
    /// migration is cut over, while it has more than one table.
    pub can_remove_tables: bool,
}

/// Operators may change the table set of a migration that is not cut over.
fn can_change_tables(who: &SignedIn, record: &MigrationRecord) -> bool {
    who.user.role >= Role::Operator && record.desired_state != DesiredState::CutOver
}

/// Operators may resync a table of a running migration.
fn can_resync(who: &SignedIn, record: &MigrationRecord) -> bool {
    who.user.role >= Role::Operator && record.desired_state == DesiredState::Running
}

#[derive(Template)]
#[template(path = "migration.html")]
struct MigrationPage {
    nav: Nav,
    live: Live,
    desired: &'static str,
    patterns: String,
    audit: Vec<AuditEntry>,
    cutover: super::cutover::Panel,
    /// What the migration does not move as rows of its tables; None when a side cannot be read.
    special: Option<Vec<SpecialObject>>,
    /// Whether to show the form adding tables (operators, until the migration is cut over).
    can_add_tables: bool,
}

#[derive(Template)]
#[template(path = "migration_live.html")]
struct LivePartial {
    live: Live,
}

fn live(app: &AppState, m: &MigrationView, id: Option<uuid::Uuid>) -> Live {
    let series = id.map(|id| app.lag_history.series(id, Duration::from_secs(60), 1));
    let rate = series
        .as_ref()
        .and_then(|s| s.rate.last().copied())
        .filter(|_| m.state != "paused" && m.state != "created");
    let tables = m
        .tables
        .iter()
        .map(|t| {
            let done = t.state == "synced" || t.state == "catching_up";
            let eta = (t.state == "copying")
                .then(|| id.and_then(|id| app.lag_history.copy_rate(id, &t.name)))
                .flatten()
                .and_then(|rate| {
                    let left = t.rows_estimated? - t.rows_copied;
                    Some(if left <= 0 {
                        "finishing".to_string()
                    } else {
                        format!("about {} left", view::duration_text(left as f64 / rate))
                    })
                });
            TableRow {
                name: t.name.clone(),
                identity: t.identity.clone(),
                state: t.state.clone(),
                state_words: view::state_words(&t.state),
                progress: Progress::new(t.rows_copied, t.rows_estimated, done),
                eta,
                error: t.error.clone(),
                objects_pending: t.objects_pending.clone(),
                objects_failed: t.objects_failed.clone(),
            }
        })
        .collect();
    Live {
        row: MigrationRow::new(m),
        events_applied: view::count_text(m.events_applied),
        throughput: rate.map_or_else(
            || "–".into(),
            |r| format!("{} /s", view::thousands(r.round() as i64)),
        ),
        last_tick: view::count_text(m.last_tick),
        applied_tick: view::count_text(m.applied_tick),
        tables,
        can_resync: false,
        can_remove_tables: false,
    }
}

/// The migration's record, and its live part as `who` sees it; with `special`, the special
/// objects too (for the page, not the fragment it polls).
async fn load(
    app: &AppState,
    who: &SignedIn,
    name: &str,
    special: bool,
) -> Result<(MigrationRecord, Live, Option<Vec<SpecialObject>>), PageError> {
    let record = migrations::find(app, name).await?;
    let m = if special {
        migrations::get(app, name).await?
    } else {
        migrations::get_status(app, &record).await?
    };
    let mut live = live(app, &m, Some(record.id));
    live.can_resync = can_resync(who, &record);
    live.can_remove_tables = can_change_tables(who, &record) && record.tables.len() > 1;
    Ok((record, live, m.special_objects))
}

/// `GET /ui/migrations/{name}`.
pub async fn page(
    State(app): State<AppState>,
    who: SignedIn,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let (record, live, special) = load(&app, &who, &name, true).await?;
    let audit = crate::service::audit::list(&app, Some(name.clone()), None, Some(50)).await?;
    let cutover = super::cutover::panel(&app, &who, &record).await?;
    let can_add_tables = can_change_tables(&who, &record);
    render(&MigrationPage {
        nav: Nav::new("overview", &who),
        live,
        desired: record.desired_state.as_str(),
        patterns: record
            .table_patterns
            .map_or_else(|| "every table".into(), |p| p.join(", ")),
        audit,
        cutover,
        special,
        can_add_tables,
    })
}

/// `GET /ui/migrations/{name}/live`: the fragment the page polls.
pub async fn live_fragment(
    State(app): State<AppState>,
    who: SignedIn,
    Path(name): Path<String>,
) -> Result<Response, PageError> {
    let (_, live, _) = load(&app, &who, &name, false).await?;
    render(&LivePartial { live })
}

#[derive(Template)]
#[template(path = "resync_confirm.html")]
struct ResyncConfirm<'a> {
    nav: Nav,
    migration: &'a str,
    table: &'a str,
}

/// `GET /ui/migrations/{name}/tables/{table}/resync`: the confirmation page (the table's name
/// typed again; no script, so it works under the page's Content-Security-Policy).
pub async fn resync_page(
    State(app): State<AppState>,
    who: SignedIn,
    Path((name, table)): Path<(String, String)>,
) -> Result<Response, PageError> {
    who.require(Role::Operator)?;
    let record = migrations::find(&app, &name).await?;
    if !record.tables.iter().any(|t| t.display_name() == table) {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("Migration {name} has no table {table}."),
        ));
    }
    render(&ResyncConfirm {
        nav: Nav::new("overview", &who),
        migration: &record.name,
        table: &table,
    })
}

/// `POST /ui/migrations/{name}/tables/{table}/resync`: operators copy one table again, once its
/// name is typed on the confirmation page.
pub async fn resync(
    State(app): State<AppState>,
    who: SignedIn,
    Path((name, table)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    f.allow(&who, Role::Operator)?;
    f.confirmed(&table, "resync the table, type its name")?;
    let result = migrations::resync_table(&app, &name, &table)
        .await
        .map(|_| ());
    let what = Action {
        action: "migration.resync",
        route: "/ui/migrations/{name}/tables/{table}/resync",
        kind: "migration",
        name: &name,
    };
    form::done(&app, &who, what, result, &format!("/ui/migrations/{name}")).await
}

/// The form adding tables to a migration.
#[derive(Deserialize)]
pub struct AddTablesForm {
    #[serde(default)]
    pub csrf: String,
    /// `schema.table` patterns, separated by spaces, commas or lines.
    #[serde(default)]
    pub patterns: String,
    /// Checked: added tables' rows on the target are deleted and copied again.
    #[serde(default)]
    pub empty_target: Option<String>,
}

/// `POST /ui/migrations/{name}/tables`: operators add the tables the patterns select; they are
/// copied while the others replicate.
pub async fn add_tables(
    State(app): State<AppState>,
    who: SignedIn,
    Path(name): Path<String>,
    Form(f): Form<AddTablesForm>,
) -> Result<Response, PageError> {
    who.require(Role::Operator)?;
    who.check_csrf(&f.csrf)?;
    let patterns: Vec<String> = f
        .patterns
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let add = migration_tables::AddTables {
        tables: patterns,
        empty_target: f.empty_target.is_some(),
    };
    let result = migration_tables::add(&app, &name, add).await.map(|_| ());
    let what = Action {
        action: "migration.tables.add",
        route: "/ui/migrations/{name}/tables",
        kind: "migration",
        name: &name,
    };
    form::done(&app, &who, what, result, &format!("/ui/migrations/{name}")).await
}

#[derive(Template)]
#[template(path = "remove_table_confirm.html")]
struct RemoveTableConfirm<'a> {
    nav: Nav,
    migration: &'a str,
    table: &'a str,
}

/// `GET /ui/migrations/{name}/tables/{table}/remove`: the confirmation page for no longer
/// replicating a table (its name typed again).
pub async fn remove_table_page(
    State(app): State<AppState>,
    who: SignedIn,
    Path((name, table)): Path<(String, String)>,
) -> Result<Response, PageError> {
    who.require(Role::Operator)?;
    let record = migrations::find(&app, &name).await?;
    if !record.tables.iter().any(|t| t.display_name() == table) {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("Migration {name} has no table {table}."),
        ));
    }
    render(&RemoveTableConfirm {
        nav: Nav::new("overview", &who),
        migration: &record.name,
        table: &table,
    })
}

/// `POST /ui/migrations/{name}/tables/{table}/remove`: operators stop replicating one table,
/// once its name is typed on the confirmation page.
pub async fn remove_table(
    State(app): State<AppState>,
    who: SignedIn,
    Path((name, table)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    f.allow(&who, Role::Operator)?;
    f.confirmed(&table, "stop replicating the table, type its name")?;
    let result = migration_tables::remove(&app, &name, &table)
        .await
        .map(|_| ());
    let what = Action {
        action: "migration.tables.remove",
        route: "/ui/migrations/{name}/tables/{table}/remove",
        kind: "migration",
        name: &name,
    };
    form::done(&app, &who, what, result, &format!("/ui/migrations/{name}")).await
}

#[derive(Deserialize)]
pub struct RangeQuery {
    #[serde(default)]
    range: String,
}

/// `GET /ui/migrations/{name}/lag.json?range=1h|6h|24h`: the chart's points (at most 720).
pub async fn lag_series(
    State(app): State<AppState>,
    _who: SignedIn,
    Path(name): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<LagSeries>, PageError> {
    let hours = match q.range.as_str() {
        "" | "1h" => 1,
        "6h" => 6,
        "24h" => 24,
        other => {
            return Err(PageError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown range {other:?}: use 1h, 6h or 24h"),
            ))
        }
    };
    let record = migrations::find(&app, &name).await?;
    Ok(Json(app.lag_history.series(
        record.id,
        Duration::from_secs(hours * 3600),
        720,
    )))
}

/// `POST /ui/migrations/{name}/{start|pause|resume|remove}`: operators start, pause and
/// resume; removing needs an admin, as in the API.
pub async fn action(
    State(app): State<AppState>,
    who: SignedIn,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Result<Response, PageError> {
    let (role, route) = match action.as_str() {
        "start" => (Role::Operator, "/ui/migrations/{name}/start"),
        "pause" => (Role::Operator, "/ui/migrations/{name}/pause"),
        "resume" => (Role::Operator, "/ui/migrations/{name}/resume"),
        "remove" => (Role::Admin, "/ui/migrations/{name}/remove"),
        _ => return Err(form::no_such_action()),
    };
    f.allow(&who, role)?;
    if action == "remove" {
        f.confirmed(&name, "remove the migration, type its name")?;
    }
    let result = match action.as_str() {
        "start" => migrations::start(&app, &name).await.map(|_| ()),
        "pause" => migrations::pause(&app, &name).await.map(|_| ()),
        "resume" => migrations::resume(&app, &name).await.map(|_| ()),
        _ => migrations::remove(&app, &name, f.unfreeze_source.is_some()).await,
    };
    let audit_action = format!(
        "migration.{}",
        if action == "remove" {
            "delete"
        } else {
            action.as_str()
        }
    );
    let what = Action {
        action: &audit_action,
        route,
        kind: "migration",
        name: &name,
    };
    let to = if action == "remove" {
        "/ui".to_string()
    } else {
        format!("/ui/migrations/{name}")
    };
    form::done(&app, &who, what, result, &to).await
}
