//! Dashboard layer: the users page, for admins: list, set a role or a password, remove. Each
//! change ends the user's sessions at once (the service deletes them with the change).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use super::audit::Action;
use super::error::{render, PageError};
use super::form::{self, ActionForm};
use super::session::SignedIn;
use super::view::Nav;
use crate::auth::Role;
use crate::service::users;
use crate::service::AppState;
use crate::store::User;

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    nav: Nav,
    users: Vec<User>,
    roles: [&'static str; 3],
}

/// `GET /ui/users` (admins).
pub async fn page(State(app): State<AppState>, who: SignedIn) -> Result<Response, PageError> {
    who.require(Role::Admin)?;
    render(&UsersPage {
        nav: Nav::new("users", &who),
        users: users::list(app.store.as_ref()).await?,
        roles: ["viewer", "operator", "admin"],
    })
}

#[derive(Deserialize)]
pub struct UserForm {
    #[serde(flatten)]
    form: ActionForm,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: String,
}

/// `POST /ui/users/{name}/{role|password|remove}` (admins).
pub async fn action(
    State(app): State<AppState>,
    who: SignedIn,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<UserForm>,
) -> Result<Response, PageError> {
    f.form.allow(&who, Role::Admin)?;
    let store = app.store.as_ref();
    let (audit_action, route, result) = match action.as_str() {
        "role" => {
            let role: Role = f
                .role
                .parse()
                .map_err(|e: String| PageError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
            let r = users::set_role(store, &name, role).await.map(|_| ());
            ("user.set_role", "/ui/users/{name}/role", r)
        }
        "password" => {
            let r = users::set_password(store, &name, &f.password)
                .await
                .map(|_| ());
            ("user.set_password", "/ui/users/{name}/password", r)
        }
        "remove" => {
            f.form
                .confirmed(&name, "remove the user, type their name")?;
            let r = users::remove(store, &name).await;
            ("user.delete", "/ui/users/{name}/remove", r)
        }
        _ => return Err(form::no_such_action()),
    };
    let what = Action {
        action: audit_action,
        route,
        kind: "user",
        name: &name,
    };
    form::done(&app, &who, what, result, "/ui/users").await
}
