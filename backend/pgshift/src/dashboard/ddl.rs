//! Dashboard: the schema-change form of a migration's page (admins), the DDL route's page side.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::audit::Action;
use super::error::PageError;
use super::form;
use super::session::SignedIn;
use crate::auth::Role;
use crate::service::{ddl, AppState};

#[derive(Deserialize)]
pub struct SchemaChangeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    sql: String,
}

/// `POST /ui/migrations/{name}/ddl`: runs a schema change on both sides (see `service::ddl`);
/// audited, and any refusal or failure shown on the error page with PostgreSQL's words.
pub async fn run(
    State(app): State<AppState>,
    who: SignedIn,
    Path(name): Path<String>,
    Form(f): Form<SchemaChangeForm>,
) -> Result<Response, PageError> {
    who.require(Role::Admin)?;
    who.check_csrf(&f.csrf)?;
    let result = ddl::run(&app, &name, &f.sql).await.map(|_| ());
    let what = Action {
        action: "migration.ddl",
        route: "/ui/migrations/{name}/ddl",
        kind: "migration",
        name: &name,
    };
    form::done(&app, &who, what, result, &format!("/ui/migrations/{name}")).await
}
