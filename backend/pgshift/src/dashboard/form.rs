//! Dashboard layer: what the pages' action forms share. Each form carries the session's CSRF
//! token, checked with the user's role before anything runs; one whose action cannot be undone
//! also carries the object's name, typed again. Each action ends the same way: recorded in the
//! audit trail, then a redirect back to a page.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::audit::{self, Action};
use super::error::PageError;
use super::session::SignedIn;
use crate::base::Role;
use crate::service::{App, ServiceResult};

/// The fields every action form carries.
#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    pub csrf: String,
    /// For an action that cannot be undone: the object's name, typed again.
    #[serde(default)]
    pub confirm: String,
    /// For removing a cut-over migration: the operator agrees that its old server takes writes
    /// again.
    #[serde(default)]
    pub unfreeze_source: Option<String>,
}

impl ActionForm {
    /// Lets the action run: the user has at least `role`, and the form came from their session.
    pub fn allow(&self, who: &SignedIn, role: Role) -> Result<(), PageError> {
        who.require(role)?;
        who.check_csrf(&self.csrf)
    }

    /// Refuses unless `name` was typed again; `to_do` says what for and whose name, as in "remove
    /// the user, type their name".
    pub fn confirmed(&self, name: &str, to_do: &str) -> Result<(), PageError> {
        if self.confirm.trim() == name {
            Ok(())
        } else {
            Err(PageError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("To {to_do} ({name}) in the confirmation field."),
            ))
        }
    }
}

/// The answer to an action the page does not have.
pub fn no_such_action() -> PageError {
    PageError::new(StatusCode::NOT_FOUND, "There is no such action.")
}

/// Records the action and how it ended in the audit trail, then sends the browser to `to`.
pub async fn done(
    app: &App,
    who: &SignedIn,
    what: Action<'_>,
    result: ServiceResult<()>,
    to: &str,
) -> Result<Response, PageError> {
    audit::record(app, who, what, result.map_err(PageError::from)).await?;
    Ok(Redirect::to(to).into_response())
}
