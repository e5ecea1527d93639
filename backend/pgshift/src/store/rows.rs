//! Store layer: the records' rows, decoded once for both backends. Each backend says how it reads
//! a column of each kind ([`Columns`]: SQLite keeps ids, times and JSON as text, PostgreSQL as
//! uuid, timestamptz and jsonb); the records are assembled from columns here, once.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{
    AuditEntry, Cluster, DesiredState, Endpoint, MigrationRecord, NewAuditEntry, Operation,
    OperationState, SchemaMode, StoreError, StoreResult, TokenRecord, User, UserSession,
};

/// How a backend reads one column of each kind from a row.
pub(super) trait Columns {
    fn text(&self, column: &str) -> StoreResult<String>;
    fn opt_text(&self, column: &str) -> StoreResult<Option<String>>;
    fn int(&self, column: &str) -> StoreResult<i64>;
    fn uuid(&self, column: &str) -> StoreResult<Uuid>;
    fn time(&self, column: &str) -> StoreResult<DateTime<Utc>>;
    fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>>;
    fn opt_json(&self, column: &str) -> StoreResult<Option<Value>>;

    fn json(&self, column: &str) -> StoreResult<Value> {
        self.opt_json(column)?
            .ok_or_else(|| StoreError::Corrupt(format!("{column} is empty")))
    }
}

/// A unique violation as `Duplicate(what)`, anything else as a database error.
pub(super) fn map_unique(err: sqlx::Error, what: String) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate(what),
        _ => StoreError::Database(err),
    }
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, value: Value) -> StoreResult<T> {
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn role(what: &str, s: &str) -> StoreResult<crate::base::Role> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("{what} role {s:?}")))
}

pub(super) fn cluster(row: &impl Columns) -> StoreResult<Cluster> {
    Ok(Cluster {
        id: row.uuid("id")?,
        name: row.text("name")?,
        dsn: row.text("dsn")?,
        server_version: row.text("server_version")?,
        created_at: row.time("created_at")?,
    })
}

pub(super) fn migration(row: &impl Columns) -> StoreResult<MigrationRecord> {
    let desired = row.text("desired_state")?;
    Ok(MigrationRecord {
        id: row.uuid("id")?,
        name: row.text("name")?,
        source: Endpoint {
            cluster_id: row.uuid("source_cluster")?,
            database: row.text("source_database")?,
        },
        target: Endpoint {
            cluster_id: row.uuid("target_cluster")?,
            database: row.text("target_database")?,
        },
        table_patterns: row
            .opt_json("table_patterns")?
            .map(|p| from_json("table patterns", p))
            .transpose()?,
        tables: from_json("tables", row.json("tables")?)?,
        desired_state: DesiredState::parse(&desired)
            .ok_or_else(|| StoreError::Corrupt(format!("desired state {desired:?}")))?,
        last_error: row.opt_text("last_error")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        schema_mode: {
            let mode = row.text("schema_mode")?;
            SchemaMode::parse(&mode)
                .ok_or_else(|| StoreError::Corrupt(format!("schema mode {mode:?}")))?
        },
    })
}

pub(super) fn audit(row: &impl Columns) -> StoreResult<AuditEntry> {
    let status = row.int("status")?;
    Ok(AuditEntry {
        id: row.int("id")?,
        entry: NewAuditEntry {
            at: row.time("at")?,
            actor: row.text("actor")?,
            token_id: row.opt_text("token_id")?,
            role: row.opt_text("role")?,
            action: row.text("action")?,
            method: row.text("method")?,
            route: row.text("route")?,
            object_kind: row.opt_text("object_kind")?,
            object_name: row.opt_text("object_name")?,
            client_ip: row.opt_text("client_ip")?,
            status: u16::try_from(status)
                .map_err(|_| StoreError::Corrupt(format!("audit status {status}")))?,
            error_code: row.opt_text("error_code")?,
        },
    })
}

pub(super) fn token(row: &impl Columns) -> StoreResult<TokenRecord> {
    Ok(TokenRecord {
        id: row.uuid("id")?,
        subject: row.text("subject")?,
        role: role("token", &row.text("role")?)?,
        created_by: row.text("created_by")?,
        created_at: row.time("created_at")?,
        expires_at: row.time("expires_at")?,
        revoked_at: row.opt_time("revoked_at")?,
    })
}

pub(super) fn operation(row: &impl Columns) -> StoreResult<Operation> {
    let state = row.text("state")?;
    Ok(Operation {
        id: row.uuid("id")?,
        migration_id: row.uuid("migration_id")?,
        migration_name: row.text("migration_name")?,
        kind: row.text("kind")?,
        state: OperationState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("operation state {state:?}")))?,
        requested_by: row.text("requested_by")?,
        request: row.json("request")?,
        steps: from_json("operation steps", row.json("steps")?)?,
        result: row.opt_json("result")?,
        error: row.opt_text("error")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        finished_at: row.opt_time("finished_at")?,
    })
}

pub(super) fn user(row: &impl Columns) -> StoreResult<User> {
    Ok(User {
        id: row.uuid("id")?,
        name: row.text("name")?,
        password_hash: row.text("password_hash")?,
        role: role("user", &row.text("role")?)?,
        created_at: row.time("created_at")?,
    })
}

pub(super) fn session(row: &impl Columns) -> StoreResult<UserSession> {
    Ok(UserSession {
        token_hash: row.text("token_hash")?,
        user_id: row.uuid("user_id")?,
        csrf_token: row.text("csrf_token")?,
        created_at: row.time("created_at")?,
        expires_at: row.time("expires_at")?,
    })
}
