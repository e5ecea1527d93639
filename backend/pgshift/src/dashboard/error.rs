//! Dashboard layer: errors of dashboard pages, shown as HTML pages (or, for a missing session, a
//! redirect to sign-in). Service errors map through the service's `Answer`, as the API's do, so
//! status and wording match the JSON API and internal detail is logged there, never shown.

use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};

use crate::service::{Answer, ServiceError};

#[derive(Debug)]
pub enum PageError {
    /// No valid session: go to sign-in, then back to `next`. For an htmx request (a polled
    /// fragment) a 401 whose `HX-Redirect` makes htmx load the sign-in page, rather than a
    /// redirect it would follow silently and swap into the fragment.
    SignIn {
        next: Option<String>,
        htmx: bool,
    },
    Page {
        status: StatusCode,
        message: String,
    },
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PageError::Page {
            status,
            message: message.into(),
        }
    }
}

impl From<ServiceError> for PageError {
    fn from(err: ServiceError) -> Self {
        let answer = Answer::from(err);
        PageError::new(answer.status, answer.message)
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn { next, htmx } => {
                let target =
                    match next.filter(|n| n.starts_with("/ui") && !n.starts_with("/ui/sign-in")) {
                        Some(n) => format!("/ui/sign-in?next={}", encode_query(&n)),
                        None => "/ui/sign-in".to_string(),
                    };
                if !htmx {
                    return Redirect::to(&target).into_response();
                }
                let mut response = StatusCode::UNAUTHORIZED.into_response();
                response.headers_mut().insert(
                    "HX-Redirect",
                    HeaderValue::from_str(&target)
                        .unwrap_or(HeaderValue::from_static("/ui/sign-in")),
                );
                response
            }
            PageError::Page { status, message } => {
                let page = ErrorPage {
                    status: status.as_u16(),
                    title: status.canonical_reason().unwrap_or("Error"),
                    message: &message,
                };
                let body = page.render().unwrap_or_else(|err| {
                    tracing::error!(error = %err, "cannot render the error page");
                    "error".into()
                });
                let mut response = (status, Html(body)).into_response();
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
        }
    }
}

/// Percent-encodes a path for a query parameter.
pub fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Renders a template into a response; a template bug is a 500 page.
pub fn render(t: &impl Template) -> Result<Response, PageError> {
    match t.render() {
        Ok(body) => Ok(Html(body).into_response()),
        Err(err) => {
            tracing::error!(error = %err, "cannot render a dashboard page");
            Err(PageError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "This page could not be shown; the server log has the details.",
            ))
        }
    }
}
