//! Service layer: issued bearer tokens: issuing one records it (id, subject, role, expiry, issuer)
//! so that it can be listed and revoked. Used by the API and by `pgshift token`, which has no
//! running server, hence functions of the store and the keys rather than of [`App`](super::App).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ServiceError, ServiceResult};
use crate::auth::Keys;
use crate::base::Role;
use crate::store::{Store, TokenRecord};

/// Lifetime of a token when none is asked for: 30 days.
pub const DEFAULT_TTL_HOURS: u64 = 24 * 30;
/// The longest lifetime a token may have: 10 years.
pub const MAX_TTL_HOURS: u64 = 24 * 3650;

/// What to issue.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub role: Role,
    /// Who the token is for (a person or a pipeline); shown in the token list and the audit trail.
    pub subject: String,
    /// Lifetime in hours, 1 to 87600 [default: 720].
    #[serde(default)]
    pub ttl_hours: Option<u64>,
}

/// A recorded token; never the token itself.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    /// The token's `jti` claim: what to revoke.
    pub id: Uuid,
    pub subject: String,
    pub role: Role,
    /// Who issued it: the subject of the admin token that asked, or `cli`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

impl TokenView {
    fn new(t: TokenRecord, now: DateTime<Utc>) -> Self {
        let state = if t.revoked_at.is_some() {
            "revoked"
        } else if t.expires_at <= now {
            "expired"
        } else {
            "active"
        };
        Self {
            id: t.id,
            subject: t.subject,
            role: t.role,
            created_by: t.created_by,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            state: state.into(),
        }
    }
}

/// A token just issued: the only time the token itself is shown.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssuedToken {
    /// The bearer token. It is not stored and cannot be shown again.
    pub token: String,
    #[serde(flatten)]
    pub record: TokenView,
}

/// Issues a token and records it, on behalf of `created_by`.
pub async fn issue(
    store: &dyn Store,
    keys: &Keys,
    new: NewToken,
    created_by: &str,
) -> ServiceResult<IssuedToken> {
    let subject = new.subject.trim();
    if subject.is_empty() || subject.len() > 100 || subject.chars().any(char::is_control) {
        return Err(ServiceError::invalid(
            "invalid_subject",
            "the token's subject must be 1 to 100 printable characters",
        ));
    }
    let ttl_hours = new.ttl_hours.unwrap_or(DEFAULT_TTL_HOURS);
    if !(1..=MAX_TTL_HOURS).contains(&ttl_hours) {
        return Err(ServiceError::invalid(
            "invalid_ttl",
            format!("ttl_hours must be between 1 and {MAX_TTL_HOURS}"),
        ));
    }
    let (token, claims) =
        keys.issue_with_claims(subject, new.role, Duration::from_secs(ttl_hours * 3600));
    let id = Uuid::parse_str(&claims.jti).expect("issued token ids are UUIDs");
    let record = TokenRecord {
        id,
        subject: claims.sub,
        role: claims.role,
        created_by: created_by.to_string(),
        created_at: timestamp(claims.iat),
        expires_at: timestamp(claims.exp),
        revoked_at: None,
    };
    store.insert_token(&record).await?;
    Ok(IssuedToken {
        token,
        record: TokenView::new(record, Utc::now()),
    })
}

/// Every recorded token, oldest first.
pub async fn list(store: &dyn Store) -> ServiceResult<Vec<TokenView>> {
    let now = Utc::now();
    Ok(store
        .list_tokens()
        .await?
        .into_iter()
        .map(|t| TokenView::new(t, now))
        .collect())
}

/// Revokes the token with this id; from the next request on, every instance sharing the store
/// refuses it. Revoking a revoked token again is not an error.
pub async fn revoke(store: &dyn Store, id: &str) -> ServiceResult<()> {
    let not_found = || ServiceError::NotFound(format!("token {id:?}"));
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    if store.revoke_token(id, Utc::now()).await? {
        Ok(())
    } else {
        Err(not_found())
    }
}

fn timestamp(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap_or_else(Utc::now)
}
