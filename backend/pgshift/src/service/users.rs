//! Dashboard users (argon2id passwords), their sessions, and the first admin created on the
//! first start. The session cookie value is random; only its SHA-256 is stored.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
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

#[cfg(test)]
fn verify_password(password: &str, hash: &str) -> bool {
    verify_password_in(password, hash, &mut Vec::new())
}

/// The most memory a stored hash may ask for (64 MiB); the default is 19 MiB.
const MAX_HASH_BLOCKS: usize = 64 * 1024;

/// Checks `password` against a PHC-format argon2 hash, computing it in `memory` (grown to the
/// hash's size when smaller, and kept by the caller for the next check): as argon2's own
/// `verify_password`, without allocating 19 MiB anew each time, which the allocator would keep
/// per thread.
fn verify_password_in(password: &str, hash: &str, memory: &mut Vec<argon2::Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let Ok(version) = parsed
        .version
        .map(argon2::Version::try_from)
        .transpose()
        .map(Option::unwrap_or_default)
    else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    let blocks = params.block_count();
    if blocks > MAX_HASH_BLOCKS {
        return false;
    }
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut computed = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt,
            &mut computed,
            &mut memory[..blocks],
        )
        .is_ok()
        // `Output`'s equality is constant-time.
        && argon2::password_hash::Output::new(&computed).is_ok_and(|c| c == expected)
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
    let user = User {
        id: Uuid::new_v4(),
        name: name.to_string(),
        password_hash: new_password_hash(password).await?,
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

/// Checks a new password's length, then hashes it off the async runtime.
async fn new_password_hash(password: &str) -> ServiceResult<String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(ServiceError::invalid(
            "weak_password",
            format!("the password must have at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    let password = password.to_string();
    Ok(
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
    )
}

/// Every dashboard user, by name.
pub async fn list(store: &dyn Store) -> ServiceResult<Vec<User>> {
    Ok(store.list_users().await?)
}

async fn find(store: &dyn Store, name: &str) -> ServiceResult<User> {
    store
        .user_by_name(name)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("user {name:?}")))
}

/// Refuses a change that would leave no admin (nobody could manage users from the dashboard).
async fn keep_an_admin(
    store: &dyn Store,
    user: &User,
    new_role: Option<Role>,
) -> ServiceResult<()> {
    if user.role != Role::Admin || new_role == Some(Role::Admin) {
        return Ok(());
    }
    let admins = store
        .list_users()
        .await?
        .iter()
        .filter(|u| u.role == Role::Admin)
        .count();
    if admins <= 1 {
        return Err(ServiceError::conflict(
            "last_admin",
            format!(
                "{:?} is the only admin; make another user admin first",
                user.name
            ),
        ));
    }
    Ok(())
}

/// Removes a user; their sessions end at once.
pub async fn remove(store: &dyn Store, name: &str) -> ServiceResult<()> {
    let user = find(store, name).await?;
    keep_an_admin(store, &user, None).await?;
    if !store.delete_user(user.id).await? {
        return Err(ServiceError::NotFound(format!("user {name:?}")));
    }
    tracing::info!(user = %user.name, "user removed; their sessions ended");
    Ok(())
}

/// Sets a user's password (at least [`MIN_PASSWORD_LEN`] characters); their sessions end at once.
pub async fn set_password(store: &dyn Store, name: &str, password: &str) -> ServiceResult<User> {
    let mut user = find(store, name).await?;
    user.password_hash = new_password_hash(password).await?;
    if !store.update_user(&user).await? {
        return Err(ServiceError::NotFound(format!("user {name:?}")));
    }
    tracing::info!(user = %user.name, "user's password set; their sessions ended");
    Ok(user)
}

/// Sets a user's role; their sessions end at once.
pub async fn set_role(store: &dyn Store, name: &str, role: Role) -> ServiceResult<User> {
    let mut user = find(store, name).await?;
    keep_an_admin(store, &user, Some(role)).await?;
    user.role = role;
    if !store.update_user(&user).await? {
        return Err(ServiceError::NotFound(format!("user {name:?}")));
    }
    tracing::info!(user = %user.name, role = %role, "user's role set; their sessions ended");
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
    /// Every password-hashing slot is taken and the queue is full: try again shortly.
    #[error("too many sign-ins at once; try again in {0} s")]
    Busy(u64),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// What the throttle counts attempts against: a user name (by its SHA-256, so a key's size does
/// not depend on what a client sends) or a client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ThrottleKey {
    User([u8; 32]),
    Addr(IpAddr),
}

impl ThrottleKey {
    /// Attempts allowed per window: an address gets more tries than one name, as several
    /// people may sign in from behind it.
    fn limit(self) -> u32 {
        match self {
            ThrottleKey::User(_) => SignInThrottle::MAX_FAILURES,
            ThrottleKey::Addr(_) => SignInThrottle::MAX_FAILURES * 4,
        }
    }
}

#[derive(Clone, Copy)]
struct Strikes {
    count: u32,
    since: Instant,
}

/// The attempts a sign-in reserved; given back when it succeeds or never ran its check.
pub struct Reservation {
    user: ThrottleKey,
    addr: Option<ThrottleKey>,
}

/// The sign-in gate, in memory:
///
/// - Attempts per user name and per client address: each attempt is counted, atomically, before
///   any password is hashed, and given back when it succeeds; after [`Self::MAX_FAILURES`] within
///   [`Self::WINDOW`] (four times that for an address) further attempts are refused until the
///   window ends. The table holds at most [`Self::MAX_KEYS`] keys: expired ones go first, then
///   the oldest.
/// - Password hashing (argon2id, 19 MiB each): at most [`Self::HASHERS`] at once, at most
///   [`Self::QUEUED`] more waiting (each at most [`Self::QUEUE_WAIT`]); beyond that a sign-in is
///   refused at once as busy. Memory stays bounded however many requests arrive.
pub struct SignInThrottle {
    strikes: Mutex<HashMap<ThrottleKey, Strikes>>,
    hashers: Hashers,
}

impl Default for SignInThrottle {
    fn default() -> Self {
        Self {
            strikes: Mutex::new(HashMap::new()),
            hashers: Hashers::start(Self::HASHERS, Self::QUEUED),
        }
    }
}

type HashJob = Box<dyn FnOnce(&mut Vec<argon2::Block>) + Send>;

/// A fixed set of threads that compute password hashes, fed by a bounded queue. Each thread
/// keeps its own argon2 memory (19 MiB) and reuses it for every hash: allocating it anew per hash
/// on tokio's blocking pool, which grows to hundreds of threads under a flood, left the
/// allocator holding gigabytes. They end when the queue's sender (the throttle) is dropped.
struct Hashers {
    queue: std::sync::mpsc::SyncSender<HashJob>,
}

impl Hashers {
    fn start(threads: usize, queued: usize) -> Self {
        let (queue, jobs) = std::sync::mpsc::sync_channel::<HashJob>(queued);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pgshift-hash-{i}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    loop {
                        let job = match jobs.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-hashing thread");
            }
        }
        Self { queue }
    }
}

impl SignInThrottle {
    pub const MAX_FAILURES: u32 = 5;
    pub const WINDOW: Duration = Duration::from_secs(15 * 60);
    pub const MAX_KEYS: usize = 10_000;
    /// Password hashes computed at once.
    pub const HASHERS: usize = 2;
    /// Sign-ins waiting for a hashing thread; more are refused at once.
    pub const QUEUED: usize = 16;
    /// The longest a sign-in waits for its hash, queue included.
    pub const HASH_WAIT: Duration = Duration::from_secs(10);
    /// `Retry-After` of a sign-in refused as busy.
    pub const BUSY_RETRY_SECS: u64 = 2;

    fn user_key(name: &str) -> ThrottleKey {
        ThrottleKey::User(Sha256::digest(name.to_lowercase().as_bytes()).into())
    }

    /// Counts one attempt for `name` from `ip`, or says for how many seconds they are refused.
    /// Check and count happen under one lock: concurrent attempts cannot all pass the check.
    pub fn reserve(&self, name: &str, ip: Option<IpAddr>) -> Result<Reservation, u64> {
        let reservation = Reservation {
            user: Self::user_key(name),
            addr: ip.map(ThrottleKey::Addr),
        };
        let keys: Vec<ThrottleKey> = std::iter::once(reservation.user)
            .chain(reservation.addr)
            .collect();
        let mut strikes = self.strikes.lock().expect("throttle lock");
        let now = Instant::now();
        let blocked = keys
            .iter()
            .filter_map(|k| strikes.get(k).map(|s| (k, s)))
            .filter(|(k, s)| s.count >= k.limit() && now.duration_since(s.since) < Self::WINDOW)
            .map(|(_, s)| {
                (Self::WINDOW - now.duration_since(s.since))
                    .as_secs()
                    .max(1)
            })
            .max();
        if let Some(secs) = blocked {
            return Err(secs);
        }
        Self::make_room(&mut strikes, now, keys.len());
        for key in keys {
            let entry = strikes.entry(key).or_insert(Strikes {
                count: 0,
                since: now,
            });
            if now.duration_since(entry.since) >= Self::WINDOW {
                *entry = Strikes {
                    count: 0,
                    since: now,
                };
            }
            entry.count += 1;
        }
        Ok(reservation)
    }

    /// Keeps the table under [`Self::MAX_KEYS`]: drops expired keys, then the oldest tenth.
    fn make_room(strikes: &mut HashMap<ThrottleKey, Strikes>, now: Instant, adding: usize) {
        if strikes.len() + adding <= Self::MAX_KEYS {
            return;
        }
        strikes.retain(|_, s| now.duration_since(s.since) < Self::WINDOW);
        if strikes.len() + adding <= Self::MAX_KEYS {
            return;
        }
        let mut ages: Vec<(Instant, ThrottleKey)> =
            strikes.iter().map(|(k, s)| (s.since, *k)).collect();
        let evict = (strikes.len() + adding - Self::MAX_KEYS)
            .max(Self::MAX_KEYS / 10)
            .min(ages.len());
        if evict == 0 {
            return;
        }
        ages.select_nth_unstable_by_key(evict - 1, |(since, _)| *since);
        for (_, key) in &ages[..evict] {
            strikes.remove(key);
        }
        tracing::warn!(
            evicted = evict,
            "sign-in throttle full: forgot the oldest failed attempts"
        );
    }

    /// Gives the attempt back: it never reached the password check.
    fn refund(&self, r: &Reservation) {
        let mut strikes = self.strikes.lock().expect("throttle lock");
        for key in std::iter::once(r.user).chain(r.addr) {
            if let Some(s) = strikes.get_mut(&key) {
                s.count = s.count.saturating_sub(1);
            }
        }
    }

    /// A correct password: the name's failures are forgotten, the address's attempt given back.
    fn succeeded(&self, r: &Reservation) {
        let mut strikes = self.strikes.lock().expect("throttle lock");
        strikes.remove(&r.user);
        if let Some(s) = r.addr.and_then(|a| strikes.get_mut(&a)) {
            s.count = s.count.saturating_sub(1);
        }
    }

    /// Keys in the table now (tests check the cap).
    pub fn len(&self) -> usize {
        self.strikes.lock().expect("throttle lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` (a password hash) on one of the hashing threads; `None` when the queue is full
    /// or the answer takes longer than [`Self::HASH_WAIT`]. A job whose caller stopped waiting
    /// before it started is skipped.
    async fn hashing<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<argon2::Block>) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: HashJob = Box::new(move |memory| {
            if !tx.is_closed() {
                let _ = tx.send(f(memory));
            }
        });
        self.hashers.queue.try_send(job).ok()?;
        tokio::time::timeout(Self::HASH_WAIT, rx).await.ok()?.ok()
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
    fn throttle_counts_each_attempt_before_it_runs() {
        let t = SignInThrottle::default();
        let ip = Some("10.1.2.3".parse().unwrap());
        for _ in 0..SignInThrottle::MAX_FAILURES {
            t.reserve("Alice", ip).expect("within the limit");
        }
        assert!(t.reserve("alice", None).is_err());
        assert!(t.reserve("bob", None).is_ok());
        // The address has more strikes than the name: another user there may still try.
        assert!(t.reserve("carol", ip).is_ok());
        // A success forgets the name's failures.
        let r = t.reserve("dave", ip).unwrap();
        t.succeeded(&r);
        for _ in 0..SignInThrottle::MAX_FAILURES {
            t.reserve("dave", None).unwrap();
        }
    }

    #[test]
    fn throttle_table_has_a_size_cap() {
        let t = SignInThrottle::default();
        for i in 0..(SignInThrottle::MAX_KEYS * 3) {
            let _ = t.reserve(&format!("user-{i}-{}", "x".repeat(1000)), None);
        }
        assert!(t.len() <= SignInThrottle::MAX_KEYS, "{}", t.len());
        // The newest keys are the ones kept.
        let last = format!(
            "user-{}-{}",
            SignInThrottle::MAX_KEYS * 3 - 1,
            "x".repeat(1000)
        );
        for _ in 1..SignInThrottle::MAX_FAILURES {
            t.reserve(&last, None).unwrap();
        }
        assert!(t.reserve(&last, None).is_err());
    }

    #[tokio::test]
    async fn at_most_a_few_hashes_run_at_once_and_the_queue_is_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let t = Arc::new(SignInThrottle::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls = (0..100).map(|_| {
            let (t, running, most) = (t.clone(), running.clone(), most.clone());
            async move {
                t.hashing(move |_| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }
        });
        let done = futures_util::future::join_all(calls).await;
        let ran = done.iter().filter(|d| d.is_some()).count();
        assert!(most.load(Ordering::SeqCst) <= SignInThrottle::HASHERS);
        assert!(ran >= 1, "nothing ran");
        assert!(
            ran <= SignInThrottle::HASHERS + SignInThrottle::QUEUED,
            "{ran} of 100 ran: the queue is not bounded"
        );
    }

    #[test]
    fn generated_passwords_are_long_enough() {
        let p = generate_password();
        assert_eq!(p.len(), 20);
        assert_ne!(p, generate_password());
    }
}
