//! Dashboard layer: the clusters page: list, add (with a connection test first), remove.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::audit::{self, Action};
use super::error::{render, PageError};
use super::session::SignedIn;
use super::sign_in::CsrfForm;
use super::view::Nav;
use crate::base::Role;
use crate::service::cluster_probe::{self, ConnectionReport};
use crate::service::clusters::{self, ClusterView, NewCluster};
use crate::service::AppState;

#[derive(Template)]
#[template(path = "clusters.html")]
struct ClustersPage {
    nav: Nav,
    clusters: Vec<ClusterView>,
    error: Option<String>,
    name: String,
}

#[derive(Template)]
#[template(path = "connection_report.html")]
struct ReportPartial {
    report: Result<ConnectionReport, String>,
}

async fn page_with(
    app: &AppState,
    who: &SignedIn,
    error: Option<String>,
    name: String,
) -> Result<Response, PageError> {
    render(&ClustersPage {
        nav: Nav::new("clusters", who),
        clusters: clusters::list(app).await?,
        error,
        name,
    })
}

pub async fn page(State(app): State<AppState>, who: SignedIn) -> Result<Response, PageError> {
    page_with(&app, &who, None, String::new()).await
}

#[derive(Deserialize)]
pub struct ClusterForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    dsn: String,
}

/// The message a caller can act on, for errors a form shows inline (4xx); anything else
/// becomes an error page.
fn inline_error(err: crate::service::ServiceError) -> Result<String, PageError> {
    match PageError::from(err) {
        PageError::Page { status, message } if status.is_client_error() => Ok(message),
        other => Err(other),
    }
}

/// `POST /ui/clusters`: admins only. The form comes back with the error if the server does not
/// answer; the DSN is never echoed (it holds the password).
pub async fn add(
    State(app): State<AppState>,
    who: SignedIn,
    Form(f): Form<ClusterForm>,
) -> Result<Response, PageError> {
    who.require(Role::Admin)?;
    who.check_csrf(&f.csrf)?;
    let name = f.name.trim().to_string();
    let result = clusters::add(
        &app,
        NewCluster {
            name: name.clone(),
            dsn: f.dsn.trim().to_string(),
        },
    )
    .await;
    let what = Action {
        action: "cluster.create",
        route: "/ui/clusters",
        kind: "cluster",
        name: &name,
    };
    match result {
        Ok(_) => {
            audit::record(&app, &who, what, Ok(())).await?;
            Ok(Redirect::to("/ui/clusters").into_response())
        }
        Err(err) => {
            let message = inline_error(err)?;
            let failed = Err(PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                message.clone(),
            ));
            let _ = audit::record::<()>(&app, &who, what, failed).await;
            let mut response = page_with(&app, &who, Some(message), name).await?;
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
    }
}

/// `POST /ui/clusters/test`: an HTML fragment with the server version and missing privileges.
/// POST because the DSN carries a password, which must stay out of URLs and logs.
pub async fn test_connection(
    who: SignedIn,
    Form(f): Form<ClusterForm>,
) -> Result<Response, PageError> {
    who.require(Role::Admin)?;
    who.check_csrf(&f.csrf)?;
    let report = match cluster_probe::probe(f.dsn.trim()).await {
        Ok(r) => Ok(r),
        Err(err) => Err(inline_error(err)?),
    };
    render(&ReportPartial { report })
}

/// `POST /ui/clusters/{name}/remove`: admins only; refused while a migration uses the cluster.
pub async fn remove(
    State(app): State<AppState>,
    who: SignedIn,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    who.require(Role::Admin)?;
    who.check_csrf(&f.csrf)?;
    let result = clusters::remove(&app, &name).await.map_err(PageError::from);
    let what = Action {
        action: "cluster.delete",
        route: "/ui/clusters/{name}/remove",
        kind: "cluster",
        name: &name,
    };
    audit::record(&app, &who, what, result).await?;
    Ok(Redirect::to("/ui/clusters").into_response())
}
