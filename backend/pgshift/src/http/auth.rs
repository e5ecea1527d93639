//! HTTP layer: bearer-token authentication and role checks for the API.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::error::ApiError;
use super::AppState;
use crate::auth::Claims;
use crate::base::Role;

/// The authenticated caller of an API route.
pub struct Caller(pub Claims);

impl Caller {
    /// Refuses with 403 unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this action needs the {role} role; the token has {}",
                    self.0.role
                ),
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Already authenticated earlier in this request (by the audit layer): no second lookup.
        if let Some(caller) = parts.extensions.get::<AuthenticatedClaims>() {
            return Ok(Caller(caller.0.clone()));
        }
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <token> header"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?;
        let claims = state.keys.verify(token.trim()).ok_or_else(|| {
            unauthorized("the token is invalid, expired or not issued by this server")
        })?;
        // Asked of the store on every request, not cached: a revocation made through any
        // instance sharing the store holds on the very next request everywhere. Only recorded
        // tokens are accepted: one signed with the key but never issued (a leaked key, a token
        // from before token records) is refused.
        let recorded = match uuid::Uuid::parse_str(&claims.jti) {
            Ok(id) => state.store.token_revoked(id).await?,
            Err(_) => None,
        };
        match recorded {
            Some(false) => {}
            Some(true) => return Err(unauthorized("the token has been revoked")),
            None => {
                return Err(unauthorized(
                    "the token is not one this server issued; issue a new one",
                ))
            }
        }
        parts.extensions.insert(AuthenticatedClaims(claims.clone()));
        Ok(Caller(claims))
    }
}

/// The claims of a request's token once checked, kept in the request's extensions.
#[derive(Clone)]
struct AuthenticatedClaims(Claims);

/// The least role a route needs, as a type, so the check runs as an extractor: before the body
/// is read, so a caller without the role gets 403 whatever it sent.
pub trait MinRole {
    const ROLE: Role;
}

/// Read-only routes.
pub struct Viewer;
/// Start, pause, resume.
pub struct Operator;
/// Clusters and migrations.
pub struct Admin;

impl MinRole for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl MinRole for Operator {
    const ROLE: Role = Role::Operator;
}
impl MinRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// Proof that the caller is authenticated and holds at least role `R` (use [`Caller`] where the
/// claims themselves are needed).
pub struct Authorized<R: MinRole>(PhantomData<R>);

impl<R: MinRole> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Caller::from_request_parts(parts, state)
            .await?
            .require(R::ROLE)?;
        Ok(Authorized(PhantomData))
    }
}
