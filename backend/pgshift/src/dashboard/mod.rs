//! The dashboard layer, a sibling of the HTTP API: server-rendered pages under `/ui` (askama
//! templates in `web/templates`), with live parts polled as HTML fragments (htmx) and the lag
//! chart drawn by uPlot. Handlers call the same service layer as the JSON API and nothing of the
//! API's; no SQL here. `app.rs` merges these routes into the server's.

mod assets;
mod audit;
mod clusters;
mod cutover;
mod cutover_steps;
mod ddl;
mod error;
mod form;
mod migration;
mod new_migration;
mod session;
mod sign_in;
mod users;
mod verify;
mod view;

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::service::migrations;
use crate::service::AppState;
use error::{render, PageError};
use session::SignedIn;
use view::{MigrationRow, Nav};

/// The dashboard's routes, to be merged into the server's router.
pub fn router() -> Router<AppState> {
    let ui = Router::new()
        .route("/", get(overview))
        .route("/overview/rows", get(overview_rows))
        .route("/sign-in", get(sign_in::form).post(sign_in::submit))
        .route("/sign-out", post(sign_in::sign_out))
        .route("/clusters", get(clusters::page).post(clusters::add))
        .route("/clusters/test", post(clusters::test_connection))
        .route("/clusters/{name}/remove", post(clusters::remove))
        .route("/migrations/new", get(new_migration::page))
        .route("/migrations/preview", get(new_migration::preview))
        .route("/migrations", post(new_migration::create))
        .route("/migrations/{name}", get(migration::page))
        .route("/migrations/{name}/live", get(migration::live_fragment))
        .route("/migrations/{name}/lag.json", get(migration::lag_series))
        .route("/migrations/{name}/{action}", post(migration::action))
        .route("/migrations/{name}/tables", post(migration::add_tables))
        .route(
            "/migrations/{name}/tables/{table}/remove",
            get(migration::remove_table_page).post(migration::remove_table),
        )
        .route(
            "/migrations/{name}/tables/{table}/resync",
            get(migration::resync_page).post(migration::resync),
        )
        .route("/migrations/{name}/ddl", post(ddl::run))
        .route("/migrations/{name}/cutover", post(cutover::start))
        .route("/migrations/{name}/cutover/abort", post(cutover::abort))
        .route("/migrations/{name}/cutover/gates", get(cutover::gates))
        .route(
            "/migrations/{name}/cutover/progress",
            get(cutover::progress),
        )
        .route(
            "/migrations/{name}/verify",
            get(verify::fragment).post(verify::start),
        )
        .route("/users", get(users::page))
        .route("/users/{name}/{action}", post(users::action))
        .route("/static/{*path}", get(assets::serve))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .nest("/ui", ui)
}

/// Pages may not be framed, scripts and styles come from this server only.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn not_found(_who: SignedIn) -> PageError {
    PageError::new(StatusCode::NOT_FOUND, "There is no such page.")
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    nav: Nav,
    rows: Vec<MigrationRow>,
}

#[derive(Template)]
#[template(path = "overview_rows.html")]
struct OverviewRows {
    nav: Nav,
    rows: Vec<MigrationRow>,
}

async fn migration_rows(app: &AppState) -> Result<Vec<MigrationRow>, PageError> {
    Ok(migrations::list(app)
        .await?
        .iter()
        .map(MigrationRow::new)
        .collect())
}

/// `GET /ui`: every migration, with its rows refreshed every few seconds.
async fn overview(State(app): State<AppState>, who: SignedIn) -> Result<Response, PageError> {
    render(&Overview {
        rows: migration_rows(&app).await?,
        nav: Nav::new("overview", &who),
    })
}

async fn overview_rows(State(app): State<AppState>, who: SignedIn) -> Result<Response, PageError> {
    render(&OverviewRows {
        rows: migration_rows(&app).await?,
        nav: Nav::new("overview", &who),
    })
}
