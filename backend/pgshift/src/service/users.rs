//! Dashboard users (argon2id passwords), their sessions, and the first admin created on the
//! first start. The session cookie value is random; only its SHA-256 is stored.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use base64::Engine as _;
use chrono::Utc;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{check_name, ServiceError, ServiceResult};
use crate::base::Role;
use crate::store::{Store, StoreError, User, UserSession};

/// How long a dashboard session lasts from sign-in (absolute, not sliding).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The shortest password `user create` accepts.
pub const MIN_PASSWORD_LEN: usize = 12;
/// The name of the admin created on the first start.
pub const FIRST_ADMIN: &str = "admin";
/// The environment variable that sets the first admin's password.
pub const ADMIN_PASSWORD_ENV: &str = "PGSHIFT_ADMIN_PASSWORD";

fn argon2() -> Argon2<'static> {
    // argon2id, 19 MiB, 2 passes: the OWASP baseline; ~20-50 ms per hash on a small machine.
    Argon2::default()
}

pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes any password with default parameters")
        .to_string()
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of a random password, verified against when the user does not exist, so a sign-in
/// for an unknown name costs as much as one for a known name.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&random_token()))
}

/// 32 random bytes, base64url without padding (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A password for people to type once: 20 characters from an alphabet without look-alikes.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
        .collect()
}

fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Adds a user. The password must have at least [`MIN_PASSWORD_LEN`] characters.
pub async fn create(
    store: &dyn Store,
    name: &str,
    role: Role,
    password: &str,
) -> ServiceResult<User> {
    check_name("user", name)?;
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(ServiceError::invalid(
            "weak_password",
            format!("the password must have at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    let user = User {
        id: Uuid::new_v4(),
        name: name.to_string(),
        password_hash: hash_password(password),
        role,
        created_at: Utc::now(),
    };
    store.insert_user(&user).await.map_err(|e| match e {
        StoreError::Duplicate(_) => {
            ServiceError::conflict("duplicate_name", format!("user {name:?} already exists"))
        }
        other => other.into(),
    })?;
    tracing::info!(user = %user.name, role = %user.role, "user created");
    Ok(user)
}

/// On a store without users, creates `admin` with the password from [`ADMIN_PASSWORD_ENV`], or
/// with a generated one that is logged once (it is never stored in clear).
pub async fn ensure_first_admin(store: &dyn Store, password: Option<String>) -> ServiceResult<()> {
    // Computed now rather than on the first sign-in for an unknown name, which would otherwise
    // take twice as long as any other and tell that the name does not exist.
    let _ = tokio::task::spawn_blocking(decoy_hash).await;
    if store.count_users().await? > 0 {
        return Ok(());
    }
    let (password, generated) = match password {
        Some(p) => (p, false),
        None => (generate_password(), true),
    };
    match create(store, FIRST_ADMIN, Role::Admin, &password).await {
        Ok(_) if generated => {
            tracing::warn!(
                user = FIRST_ADMIN,
                password = %password,
                "first start: created the dashboard admin with this one-time password; sign in and keep it safe, it is not shown again"
            );
            Ok(())
        }
        Ok(_) => {
            tracing::info!(user = FIRST_ADMIN, "first start: created the dashboard admin with the password from {ADMIN_PASSWORD_ENV}");
            Ok(())
        }
        // Another instance on the same store created it first.
        Err(ServiceError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why a sign-in was refused. Never says whether the user exists.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("wrong user name or password")]
    BadCredentials,
    #[error("too many failed sign-ins; try again in {0} s")]
    Throttled(u64),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Failed sign-ins per user name and per client address, kept in memory: after
/// [`SignInThrottle::MAX_FAILURES`] failures within [`SignInThrottle::WINDOW`] further attempts
/// are refused until the window ends. Bounded: the oldest entries go past `MAX_KEYS`.
#[derive(Default)]
pub struct SignInThrottle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl SignInThrottle {
    pub const MAX_FAILURES: u32 = 5;
    pub const WINDOW: Duration = Duration::from_secs(15 * 60);
    const MAX_KEYS: usize = 10_000;

    fn keys(name: &str, ip: Option<IpAddr>) -> Vec<String> {
        let mut keys = vec![format!("user:{}", name.to_lowercase())];
        if let Some(ip) = ip {
            keys.push(format!("ip:{ip}"));
        }
        keys
    }

    /// Failures allowed for a key: an address gets more tries than one name, as several people
    /// may sign in from behind it.
    fn limit(key: &str) -> u32 {
        if key.starts_with("ip:") {
            Self::MAX_FAILURES * 4
        } else {
            Self::MAX_FAILURES
        }
    }

    /// Seconds until `name` from `ip` may try again, if it is throttled now.
    fn blocked_for(&self, name: &str, ip: Option<IpAddr>) -> Option<u64> {
        let failures = self.failures.lock().expect("throttle lock");
        let now = Instant::now();
        Self::keys(name, ip)
            .iter()
            .filter_map(|k| failures.get(k).map(|f| (k, f)))
            .filter(|(k, (n, since))| {
                *n >= Self::limit(k) && now.duration_since(*since) < Self::WINDOW
            })
            .map(|(_, (_, since))| (Self::WINDOW - now.duration_since(*since)).as_secs().max(1))
            .max()
    }

    fn failed(&self, name: &str, ip: Option<IpAddr>) {
        let mut failures = self.failures.lock().expect("throttle lock");
        let now = Instant::now();
        if failures.len() >= Self::MAX_KEYS {
            failures.retain(|_, (_, since)| now.duration_since(*since) < Self::WINDOW);
        }
        for key in Self::keys(name, ip) {
            let entry = failures.entry(key).or_insert((0, now));
            if now.duration_since(entry.1) >= Self::WINDOW {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
    }

    fn succeeded(&self, name: &str) {
        self.failures
            .lock()
            .expect("throttle lock")
            .remove(&format!("user:{}", name.to_lowercase()));
    }
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
    if let Some(secs) = throttle.blocked_for(name, ip) {
        return Err(SignInError::Throttled(secs));
    }
    let user = store.user_by_name(name).await.map_err(ServiceError::from)?;
    let hash = user
        .as_ref()
        .map_or_else(|| decoy_hash().to_string(), |u| u.password_hash.clone());
    let password = password.to_string();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let user = match (user, ok) {
        (Some(user), true) => user,
        _ => {
            throttle.failed(name, ip);
            tracing::info!(ip = ?ip, "dashboard sign-in refused");
            return Err(SignInError::BadCredentials);
        }
    };
    throttle.succeeded(name);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse battery");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn throttle_blocks_after_repeated_failures_per_name() {
        let t = SignInThrottle::default();
        let ip = Some("10.1.2.3".parse().unwrap());
        for _ in 0..SignInThrottle::MAX_FAILURES {
            assert!(t.blocked_for("Alice", ip).is_none());
            t.failed("alice", ip);
        }
        assert!(t.blocked_for("alice", None).is_some());
        assert!(t.blocked_for("bob", None).is_none());
        // The address has fewer strikes than the name: another user there may still try.
        assert!(t.blocked_for("bob", ip).is_none());
    }

    #[test]
    fn generated_passwords_are_long_enough() {
        let p = generate_password();
        assert_eq!(p.len(), 20);
        assert_ne!(p, generate_password());
    }
}
