//! Dashboard layer: signing in and out.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::error::{render, PageError};
use super::session::{self, SignedIn};
use crate::service::users::{self, SignInError};
use crate::service::AppState;

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    next: &'a str,
    name: &'a str,
    error: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct NextQuery {
    #[serde(default)]
    next: String,
}

/// Only paths of the dashboard itself: never another site.
fn safe_next(next: &str) -> &str {
    if next.starts_with("/ui") && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/ui"
    }
}

pub async fn form(Query(q): Query<NextQuery>) -> Result<Response, PageError> {
    render(&SignInPage {
        next: safe_next(&q.next),
        name: "",
        error: None,
    })
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

/// `POST /ui/sign-in`: the same answer for an unknown user and a wrong password; repeated
/// failures are refused for a while (429), and sign-ins beyond what the password hashing can
/// take at once are refused as busy (503); both with `Retry-After`.
pub async fn submit(
    State(app): State<AppState>,
    session::ClientAddr(client): session::ClientAddr,
    headers: HeaderMap,
    Form(f): Form<SignInForm>,
) -> Result<Response, PageError> {
    session::check_origin(&Method::POST, &headers)?;
    let result = users::sign_in(
        app.store.as_ref(),
        &app.sign_in_throttle,
        f.name.trim(),
        &f.password,
        client,
    )
    .await;
    let next = safe_next(&f.next);
    match result {
        Ok(new) => {
            let mut response = Redirect::to(next).into_response();
            *response.status_mut() = StatusCode::SEE_OTHER;
            response.headers_mut().insert(
                header::SET_COOKIE,
                session::set_cookie(&headers, &new.cookie),
            );
            Ok(response)
        }
        Err(
            err @ (SignInError::BadCredentials | SignInError::Throttled(_) | SignInError::Busy(_)),
        ) => {
            let (status, retry_after) = match err {
                SignInError::Throttled(secs) => (StatusCode::TOO_MANY_REQUESTS, Some(secs)),
                SignInError::Busy(secs) => (StatusCode::SERVICE_UNAVAILABLE, Some(secs)),
                _ => (StatusCode::UNAUTHORIZED, None),
            };
            let mut response = render(&SignInPage {
                next,
                name: f.name.trim(),
                error: Some(err.to_string()),
            })?;
            *response.status_mut() = status;
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Ok(response)
        }
        Err(SignInError::Service(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// `POST /ui/sign-out`: deletes the session, so the cookie is worthless even if kept.
pub async fn sign_out(
    State(app): State<AppState>,
    who: SignedIn,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    who.check_csrf(&f.csrf)?;
    if let Some(cookie) = session::cookie_value(&headers) {
        users::sign_out(app.store.as_ref(), &cookie).await?;
    }
    let mut response = Redirect::to("/ui/sign-in").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(&headers));
    Ok(response)
}
