//! Dashboard layer: dashboard sessions: the cookie, the signed-in user as an extractor, role and
//! CSRF checks.
//!
//! The cookie is `HttpOnly; SameSite=Strict; Path=/ui` (and `Secure` behind HTTPS), holding a
//! random value whose SHA-256 names the stored session, so sign-out and expiry take effect at
//! once. Every state-changing form carries the session's CSRF token; POSTs whose `Origin` names
//! another host are refused as well (this also covers the sign-in form, which has no session).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use super::error::PageError;
use crate::base::Role;
use crate::service::users;
use crate::service::AppState;
use crate::store::{User, UserSession};

pub const COOKIE: &str = "pgshift_session";

/// The cookie value from the request, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

fn secure(headers: &HeaderMap) -> &'static str {
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    if https {
        "; Secure"
    } else {
        ""
    }
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(headers: &HeaderMap, value: &str) -> HeaderValue {
    let max_age = users::SESSION_TTL.as_secs();
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        secure(headers)
    ))
    .expect("cookie value is base64url")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(headers: &HeaderMap) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure(headers)
    ))
    .expect("static cookie")
}

/// The client's address: the peer's, or the one a trusted reverse proxy forwards (the same rule
/// as the API's audit trail, [`crate::service::audit::TrustedProxies`]).
pub struct ClientAddr(pub Option<IpAddr>);

impl ClientAddr {
    fn of(parts: &Parts, app: &AppState) -> ClientAddr {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr);
        ClientAddr(app.trusted_proxies.client_addr(peer, &parts.headers))
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr::of(parts, app))
    }
}

/// Refuses a state-changing request whose `Origin` is another site's. Browsers send `Origin` on
/// every POST; its absence (curl, old clients) is left to the CSRF token and SameSite.
pub fn check_origin(method: &Method, headers: &HeaderMap) -> Result<(), PageError> {
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    if origin_host == Some(host) {
        Ok(())
    } else {
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "This request came from another site and was refused.",
        ))
    }
}

/// A signed-in dashboard user. Pages that extract it redirect to sign-in without a session.
pub struct SignedIn {
    pub user: User,
    pub session: UserSession,
    /// Where the request came from, for the audit trail.
    pub client: Option<IpAddr>,
}

impl SignedIn {
    /// Refuses with the 403 page unless the user's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), PageError> {
        if self.user.role >= role {
            Ok(())
        } else {
            Err(PageError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "This needs the {role} role; you are signed in as {} with the {} role.",
                    self.user.name, self.user.role
                ),
            ))
        }
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, submitted: &str) -> Result<(), PageError> {
        if constant_time_eq(submitted, &self.session.csrf_token) {
            Ok(())
        } else {
            Err(PageError::new(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this dashboard. Reload the page and try again.",
            ))
        }
    }

    pub fn can_operate(&self) -> bool {
        self.user.role >= Role::Operator
    }

    pub fn is_admin(&self) -> bool {
        self.user.role >= Role::Admin
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        check_origin(&parts.method, &parts.headers)?;
        // Handlers under `/ui` see the path without it; the original one is what to return to.
        let next = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map(|u| &u.0)
            .unwrap_or(&parts.uri)
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|_| parts.method == Method::GET);
        // htmx's polled fragments: the page they sit in is the one to come back to.
        let htmx = parts.headers.contains_key("hx-request");
        let next = if htmx {
            parts
                .headers
                .get("hx-current-url")
                .and_then(|v| v.to_str().ok())
                .and_then(|url| url.split_once("://"))
                .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        } else {
            next
        };
        let Some(cookie) = cookie_value(&parts.headers) else {
            return Err(PageError::SignIn { next, htmx });
        };
        match users::session(state.store.as_ref(), &cookie).await? {
            Some((user, session)) => Ok(SignedIn {
                user,
                session,
                client: ClientAddr::of(parts, state).0,
            }),
            None => Err(PageError::SignIn { next, htmx }),
        }
    }
}

/// Compares the submitted CSRF token with the session's in time independent of where they
/// differ, so the token cannot be guessed byte by byte from response times.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let t = crate::service::users::random_token();
        assert!(constant_time_eq(&t, &t.clone()));
        assert!(!constant_time_eq(&t, "x"));
        assert!(!constant_time_eq("ab", "ac"));
    }
}
