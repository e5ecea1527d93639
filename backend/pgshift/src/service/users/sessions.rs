//! Service layer: signing in and out of the dashboard. A sign-in passes the throttle, checks the
//! password (an unknown name costs one argon2 verification too) and opens a session: the cookie
//! value is random and shown once; only its SHA-256 is stored.

use std::net::IpAddr;
use std::time::Duration;

use chrono::Utc;

use super::password::{decoy_hash, random_token, token_hash, verify_password_in};
use super::throttle::SignInThrottle;
use crate::service::{ServiceError, ServiceResult};
use crate::store::{Store, User, UserSession};

/// How long a dashboard session lasts from sign-in (absolute, not sliding).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Why a sign-in was refused. Never says whether the user exists.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("too many failed sign-ins; try again in {0} s")]
    Throttled(u64),
    /// Every password-hashing slot is taken and the queue is full: try again shortly.
    #[error("too many sign-ins at once; try again in {0} s")]
    Busy(u64),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// A new session: the cookie value to send (shown once) and the stored record.
pub struct NewSession {
    pub cookie: String,
    pub session: UserSession,
    pub user: User,
}

/// Checks the password and opens a session. Unknown users cost one argon2 verification too.
pub async fn sign_in(
    store: &dyn Store,
    throttle: &SignInThrottle,
    name: &str,
    password: &str,
    ip: Option<IpAddr>,
) -> Result<NewSession, SignInError> {
    let reservation = throttle.reserve(name, ip).map_err(SignInError::Throttled)?;
    let user = match store.user_by_name(name).await {
        Ok(user) => user,
        Err(e) => {
            throttle.refund(&reservation);
            return Err(ServiceError::from(e).into());
        }
    };
    let hash = user
        .as_ref()
        .map_or_else(|| decoy_hash().to_string(), |u| u.password_hash.clone());
    let password = password.to_string();
    let Some(ok) = throttle
        .hashing(move |memory| verify_password_in(&password, &hash, memory))
        .await
    else {
        throttle.refund(&reservation);
        tracing::warn!(ip = ?ip, "dashboard sign-in refused: every password-hashing slot is busy");
        return Err(SignInError::Busy(SignInThrottle::BUSY_RETRY_SECS));
    };
    let user = match (user, ok) {
        (Some(user), true) => user,
        _ => {
            tracing::info!(ip = ?ip, "dashboard sign-in refused");
            return Err(SignInError::BadCredentials);
        }
    };
    throttle.succeeded(&reservation);
    let now = Utc::now();
    if let Err(err) = store.delete_expired_sessions(now).await {
        tracing::warn!(error = %err, "cannot delete expired sessions");
    }
    let cookie = random_token();
    let session = UserSession {
        token_hash: token_hash(&cookie),
        user_id: user.id,
        csrf_token: random_token(),
        created_at: now,
        expires_at: now + chrono::Duration::from_std(SESSION_TTL).expect("session ttl fits"),
    };
    store
        .insert_session(&session)
        .await
        .map_err(ServiceError::from)?;
    tracing::info!(user = %user.name, "dashboard sign-in");
    Ok(NewSession {
        cookie,
        session,
        user,
    })
}

/// The live session and its user for a cookie value; None when unknown or expired.
pub async fn session(
    store: &dyn Store,
    cookie: &str,
) -> ServiceResult<Option<(User, UserSession)>> {
    let Some(session) = store.session_by_hash(&token_hash(cookie)).await? else {
        return Ok(None);
    };
    if session.expires_at <= Utc::now() {
        store.delete_session(&session.token_hash).await?;
        return Ok(None);
    }
    Ok(store
        .user_by_id(session.user_id)
        .await?
        .map(|user| (user, session)))
}

/// Ends the session for this cookie value (nothing happens for an unknown one).
pub async fn sign_out(store: &dyn Store, cookie: &str) -> ServiceResult<()> {
    Ok(store.delete_session(&token_hash(cookie)).await?)
}
