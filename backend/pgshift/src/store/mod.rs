//! The metadata store: cluster definitions and migrations, behind one trait so that a
//! PostgreSQL backend can sit beside the embedded SQLite one.

mod model;
mod operation;
mod postgres;
mod sqlite;
mod users_sql;

pub use model::{
    AuditEntry, AuditFilter, Cluster, ColumnSpec, DesiredState, Endpoint, MigrationRecord,
    NewAuditEntry, TableSpec, TokenRecord,
};
pub use model::{User, UserSession};
pub use operation::{Operation, OperationState, OperationStep, StepOutcome};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What can go wrong talking to the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("{0} is still used by a migration")]
    InUse(String),
    #[error("metadata store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("metadata store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("metadata store holds a malformed record: {0}")]
    Corrupt(String),
    /// Holds the URL's scheme only (never the URL: it may carry a password).
    #[error("unsupported metadata URL scheme {0:?}: use postgres:// or postgresql:// for a PostgreSQL store, or leave it unset for SQLite in the data directory")]
    UnsupportedUrl(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Opens the metadata store: SQLite in `data_dir` when `metadata` is `None`, PostgreSQL for a
/// `postgres://` or `postgresql://` URL.
pub async fn open(metadata: Option<&str>, data_dir: &Path) -> StoreResult<Arc<dyn Store>> {
    let Some(url) = metadata else {
        return Ok(Arc::new(SqliteStore::open(data_dir).await?));
    };
    match url_scheme(url) {
        Some(s) if s.eq_ignore_ascii_case("postgres") || s.eq_ignore_ascii_case("postgresql") => {
            Ok(Arc::new(PostgresStore::open(url).await?))
        }
        Some(s) => Err(StoreError::UnsupportedUrl(s.to_string())),
        None => Err(StoreError::UnsupportedUrl("(none)".into())),
    }
}

/// The scheme of `url` (before `://`), if it looks like one.
fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once("://")?;
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// `url` fit for logs: scheme, host, port and database; user, password and query left out.
pub fn redact_url(url: &str) -> String {
    let Some(scheme) = url_scheme(url) else {
        return "(not a URL)".into();
    };
    if url.contains("password=") {
        return format!("{scheme}://…");
    }
    let rest = &url[scheme.len() + 3..];
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => (true, &rest[at + 1..]),
        None => (false, rest),
    };
    let (after, query) = match after.split_once('?') {
        Some((a, _)) => (a, true),
        None => (after, false),
    };
    let redacted = format!(
        "{scheme}://{}{after}{}",
        if userinfo { "…@" } else { "" },
        if query { "?…" } else { "" }
    );
    // Belt and braces for malformed URLs (an unencoded '@' or '?' in the password).
    if url_secrets(url)
        .iter()
        .any(|s| redacted.contains(s.as_str()))
    {
        format!("{scheme}://…")
    } else {
        redacted
    }
}

/// The passwords a URL carries (in its user info or a `password=` parameter), as written and
/// percent-decoded, so that errors and logs can be checked for them.
pub(crate) fn url_secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    if let Some(at) = rest.rfind('@') {
        if let Some((_, password)) = rest[..at].split_once(':') {
            found.push(password.to_string());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("password=") {
                found.push(value.to_string());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    found
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The metadata store. Every method is one short transaction; callers never see SQL.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn insert_cluster(&self, cluster: &Cluster) -> StoreResult<()>;
    async fn list_clusters(&self) -> StoreResult<Vec<Cluster>>;
    async fn cluster_by_name(&self, name: &str) -> StoreResult<Option<Cluster>>;
    async fn cluster_by_id(&self, id: Uuid) -> StoreResult<Option<Cluster>>;
    /// Refuses (InUse) while a migration refers to the cluster.
    async fn delete_cluster(&self, id: Uuid) -> StoreResult<()>;

    async fn insert_migration(&self, migration: &MigrationRecord) -> StoreResult<()>;
    async fn list_migrations(&self) -> StoreResult<Vec<MigrationRecord>>;
    async fn migration_by_name(&self, name: &str) -> StoreResult<Option<MigrationRecord>>;
    async fn set_desired_state(&self, id: Uuid, state: DesiredState) -> StoreResult<()>;
    async fn set_last_error(&self, id: Uuid, error: Option<&str>) -> StoreResult<()>;
    async fn delete_migration(&self, id: Uuid) -> StoreResult<()>;
    /// Appends one entry to the audit trail.
    async fn insert_audit(&self, entry: &NewAuditEntry) -> StoreResult<()>;
    /// Audit entries matching `filter`, newest first.
    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEntry>>;
    /// Records an issued token.
    async fn insert_token(&self, token: &TokenRecord) -> StoreResult<()>;
    /// Every recorded token, revoked and expired ones included, oldest first.
    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>>;
    /// Marks the token revoked at `at` (a second revocation keeps the first time). `false` when
    /// no token has that id.
    async fn revoke_token(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<bool>;
    /// Whether the token with this id was revoked, `None` when no token with this id was ever
    /// recorded; read on every authenticated request, so that a revocation holds at once on
    /// every instance sharing the store.
    async fn token_revoked(&self, id: Uuid) -> StoreResult<Option<bool>>;
    /// Stores a new operation.
    async fn insert_operation(&self, op: &Operation) -> StoreResult<()>;
    /// Saves an operation's state, steps, result, error and times (by id).
    async fn update_operation(&self, op: &Operation) -> StoreResult<()>;
    async fn operation_by_id(&self, id: Uuid) -> StoreResult<Option<Operation>>;
    /// Operations on the migration with this name, newest first, at most `limit`.
    async fn list_operations(
        &self,
        migration_name: &str,
        limit: u32,
    ) -> StoreResult<Vec<Operation>>;
    /// Operations still marked running (at start: left so by a crash).
    async fn running_operations(&self) -> StoreResult<Vec<Operation>>;
    /// Cheap round trip used by readiness checks.
    async fn ping(&self) -> StoreResult<()>;

    /// Adds a dashboard user; Duplicate when the name is taken.
    async fn insert_user(&self, user: &User) -> StoreResult<()>;
    async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>>;
    async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<User>>;
    async fn count_users(&self) -> StoreResult<i64>;
    /// Every user, by name.
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// Writes the user's password hash and role (by id) and deletes every session of theirs, in
    /// one transaction; `false` when no user has that id.
    async fn update_user(&self, user: &User) -> StoreResult<bool>;
    /// Deletes the user and every session of theirs; `false` when no user has that id.
    async fn delete_user(&self, id: Uuid) -> StoreResult<bool>;
    async fn insert_session(&self, session: &UserSession) -> StoreResult<()>;
    /// The session with this token hash, expired or not (the caller checks `expires_at`).
    async fn session_by_hash(&self, token_hash: &str) -> StoreResult<Option<UserSession>>;
    async fn delete_session(&self, token_hash: &str) -> StoreResult<()>;
    /// Deletes sessions that expired before `now`; returns how many.
    async fn delete_expired_sessions(&self, now: chrono::DateTime<chrono::Utc>)
        -> StoreResult<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords() {
        for (url, expected) in [
            (
                "postgresql://u:secretpw@h:5432/db",
                "postgresql://…@h:5432/db",
            ),
            (
                "postgres://h/db?password=secretpw&sslmode=require",
                "postgres://…",
            ),
            ("postgres://h/db?password=se@cretpw", "postgres://…"),
            (
                "postgres://u:x?secretpw@h/db?sslmode=disable",
                "postgres://…@h/db?…",
            ),
            ("postgresql://u:se%40cretpw@h/db", "postgresql://…@h/db"),
            ("postgresql://u:a@secretpw@h/db", "postgresql://…@h/db"),
            ("postgresql://h/db", "postgresql://h/db"),
            ("u:secretpw@h", "(not a URL)"),
        ] {
            assert_eq!(redact_url(url), expected, "{url}");
        }
    }

    #[test]
    fn url_secrets_finds_both_forms() {
        let s = url_secrets("postgresql://u:p%40ss@h/db?password=q");
        assert!(s.contains(&"p%40ss".to_string()));
        assert!(s.contains(&"p@ss".to_string()));
        assert!(s.contains(&"q".to_string()));
    }

    #[tokio::test]
    async fn unsupported_scheme_is_refused_without_the_password() {
        let dir = std::env::temp_dir();
        for url in ["mysql://u:secretpw@h/db", "u:secretpw@h/db", ""] {
            let err = match open(Some(url), &dir).await {
                Ok(_) => panic!("{url:?} opened"),
                Err(e) => e,
            };
            assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err:?}");
            let text = format!("{err} {err:?}");
            assert!(!text.contains("secretpw"), "{text}");
            assert!(text.contains("postgresql://"), "{text}");
        }
    }
}
