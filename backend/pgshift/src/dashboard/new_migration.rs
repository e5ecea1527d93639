//! Dashboard layer: the new-migration form: source and target, table patterns with a live preview
//! of what they select and what the engine will refuse, then create.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::audit::{self, Action};
use super::error::{render, PageError};
use super::session::SignedIn;
use super::view::Nav;
use crate::base::Role;
use crate::service::clusters::{self, ClusterView};
use crate::service::migration_preview::{self, Preview};
use crate::service::migrations::{self, EndpointRef, NewMigration};
use crate::service::AppState;
use crate::store::SchemaMode;

#[derive(Deserialize, Default)]
pub struct MigrationForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    source_cluster: String,
    #[serde(default)]
    source_database: String,
    #[serde(default)]
    target_cluster: String,
    #[serde(default)]
    target_database: String,
    /// One pattern per line (or comma-separated); empty for every table.
    #[serde(default)]
    tables: String,
    /// `create`, `existing`, or empty for the default (create when no selected table exists on
    /// the target).
    #[serde(default)]
    schema: String,
}

impl MigrationForm {
    fn patterns(&self) -> Vec<String> {
        self.tables
            .split(['\n', ','])
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect()
    }

    fn schema(&self) -> Option<SchemaMode> {
        SchemaMode::parse(self.schema.trim())
    }

    fn source(&self) -> EndpointRef {
        EndpointRef {
            cluster: self.source_cluster.clone(),
            database: self.source_database.trim().to_string(),
        }
    }

    fn target(&self) -> EndpointRef {
        EndpointRef {
            cluster: self.target_cluster.clone(),
            database: self.target_database.trim().to_string(),
        }
    }
}

#[derive(Template)]
#[template(path = "new_migration.html")]
struct NewMigrationPage {
    nav: Nav,
    clusters: Vec<ClusterView>,
    form: MigrationForm,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "preview.html")]
struct PreviewPartial {
    preview: Result<Preview, String>,
    max_checked: usize,
}

async fn page_with(
    app: &AppState,
    who: &SignedIn,
    form: MigrationForm,
    error: Option<String>,
) -> Result<Response, PageError> {
    render(&NewMigrationPage {
        nav: Nav::new("new", who),
        clusters: clusters::list(app).await?,
        form,
        error,
    })
}

pub async fn page(State(app): State<AppState>, who: SignedIn) -> Result<Response, PageError> {
    who.require(Role::Admin)?;
    page_with(&app, &who, MigrationForm::default(), None).await
}

fn inline_error(err: crate::service::ServiceError) -> Result<String, PageError> {
    match PageError::from(err) {
        PageError::Page { status, message } if status.is_client_error() => Ok(message),
        other => Err(other),
    }
}

/// `GET /ui/migrations/preview?source_cluster=…`: the fragment listing matched tables. A GET
/// (it changes nothing); the fields carry names only, never credentials.
pub async fn preview(
    State(app): State<AppState>,
    who: SignedIn,
    Query(f): Query<MigrationForm>,
) -> Result<Response, PageError> {
    who.require(Role::Admin)?;
    let preview = if f.source_cluster.is_empty()
        || f.target_cluster.is_empty()
        || f.source_database.trim().is_empty()
        || f.target_database.trim().is_empty()
    {
        Err(
            "Pick the source and target cluster and database to see which tables match."
                .to_string(),
        )
    } else {
        match migration_preview::preview(&app, &f.source(), &f.target(), &f.patterns(), f.schema())
            .await
        {
            Ok(p) => Ok(p),
            Err(err) => Err(inline_error(err)?),
        }
    };
    render(&PreviewPartial {
        preview,
        max_checked: migration_preview::MAX_CHECKED,
    })
}

/// `POST /ui/migrations`: admins only; on success, the new migration's page.
pub async fn create(
    State(app): State<AppState>,
    who: SignedIn,
    Form(f): Form<MigrationForm>,
) -> Result<Response, PageError> {
    who.require(Role::Admin)?;
    who.check_csrf(&f.csrf)?;
    let patterns = f.patterns();
    let name = f.name.trim().to_string();
    let result = migrations::create(
        &app,
        NewMigration {
            name: name.clone(),
            source: f.source(),
            target: f.target(),
            tables: (!patterns.is_empty()).then_some(patterns),
            schema: f.schema(),
        },
    )
    .await;
    let what = Action {
        action: "migration.create",
        route: "/ui/migrations",
        kind: "migration",
        name: &name,
    };
    match result {
        Ok(m) => {
            audit::record(&app, &who, what, Ok(())).await?;
            Ok(Redirect::to(&format!("/ui/migrations/{}", m.name)).into_response())
        }
        Err(err) => {
            let message = inline_error(err)?;
            let failed = Err(PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                message.clone(),
            ));
            let _ = audit::record::<()>(&app, &who, what, failed).await;
            let mut response = page_with(&app, &who, f, Some(message)).await?;
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
    }
}
