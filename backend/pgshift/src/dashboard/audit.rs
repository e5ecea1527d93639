//! Dashboard layer: its actions in the audit trail, beside the API's and through the same
//! `service::audit`: the user's name as the actor, the dashboard route as the route, and the
//! resulting status.

use axum::http::StatusCode;
use chrono::Utc;

use super::error::PageError;
use super::session::SignedIn;
use crate::service::App;
use crate::store::NewAuditEntry;

/// What a dashboard action did, for one audit entry.
pub struct Action<'a> {
    /// e.g. `migration.start`.
    pub action: &'a str,
    /// The dashboard route pattern, e.g. `/ui/migrations/{name}/start`.
    pub route: &'static str,
    pub kind: &'static str,
    pub name: &'a str,
}

/// Records the action and hands back its result. A failure to record is logged, never shown.
pub async fn record<T>(
    app: &App,
    who: &SignedIn,
    what: Action<'_>,
    result: Result<T, PageError>,
) -> Result<T, PageError> {
    let status = match &result {
        Ok(_) => StatusCode::SEE_OTHER,
        Err(PageError::Page { status, .. }) => *status,
        Err(PageError::SignIn { .. }) => StatusCode::UNAUTHORIZED,
    };
    let entry = NewAuditEntry {
        at: Utc::now(),
        actor: who.user.name.clone(),
        token_id: None,
        role: Some(who.user.role.to_string()),
        action: what.action.to_string(),
        method: "POST".into(),
        route: what.route.into(),
        object_kind: Some(what.kind.into()),
        object_name: Some(what.name.to_string()),
        client_ip: who.client.map(|ip| ip.to_string()),
        status: status.as_u16(),
        error_code: None,
    };
    crate::service::audit::record(app, &entry).await;
    result
}
