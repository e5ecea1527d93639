//! Store layer: records kept in the metadata store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A PostgreSQL server pgshift can reach. `dsn` holds the credentials and never leaves the process.
#[derive(Clone)]
pub struct Cluster {
    pub id: Uuid,
    pub name: String,
    pub dsn: String,
    pub server_version: String,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The DSN carries a password: keep it out of any debug output.
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("server_version", &self.server_version)
            .finish_non_exhaustive()
    }
}

/// One side of a migration: a database on a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub cluster_id: Uuid,
    pub database: String,
}

/// What the operator asked a migration to do; the supervisor makes it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Created,
    Running,
    Paused,
    /// The cutover finished: the application writes to the target; nothing runs.
    CutOver,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Created => "created",
            DesiredState::Running => "running",
            DesiredState::Paused => "paused",
            DesiredState::CutOver => "cut_over",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "created" => Some(DesiredState::Created),
            "running" => Some(DesiredState::Running),
            "paused" => Some(DesiredState::Paused),
            "cut_over" => Some(DesiredState::CutOver),
            _ => None,
        }
    }
}

/// A column as the engine needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSpec {
    pub name: String,
    /// `format_type()` of the column, compared between source and target.
    pub type_name: String,
    /// Stored generated column: computed on the target, never written.
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: inserts need `OVERRIDING SYSTEM VALUE`.
    pub identity_always: bool,
}

/// A replicated table, resolved when the migration is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSpec {
    /// Small number that tags this table's events in the source queue.
    pub no: i32,
    pub schema: String,
    pub name: String,
    /// The columns rows are identified by, in key order: the primary key, or a unique index
    /// over NOT NULL columns ([`Self::key_index`]); empty for whole-row identity.
    pub key: Vec<String>,
    /// The unique index the key comes from when the table has no primary key.
    #[serde(default)]
    pub key_index: Option<String>,
    pub columns: Vec<ColumnSpec>,
    /// Partitioned on the source: capture triggers also sit on each partition.
    #[serde(default)]
    pub partitioned: bool,
}

impl TableSpec {
    /// How rows are identified, in words: `primary key`, `unique index <name>` or `whole row`.
    pub fn identity(&self) -> String {
        match (&self.key_index, self.key.is_empty()) {
            (_, true) => "whole row".into(),
            (Some(index), false) => format!("unique index {index}"),
            (None, false) => "primary key".into(),
        }
    }

    /// The unquoted `schema.table` name users see and patterns match.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The quoted name for SQL.
    pub fn sql_name(&self) -> String {
        format!(
            "{}.{}",
            crate::base::quote_ident(&self.schema),
            crate::base::quote_ident(&self.name)
        )
    }

    /// The quoted name for reading or changing this table's own rows: `ONLY` keeps an
    /// inheritance parent's statements away from its children (a partitioned table has no rows
    /// of its own, so it is read whole).
    pub fn relation_only(&self) -> String {
        if self.partitioned {
            self.sql_name()
        } else {
            format!("ONLY {}", self.sql_name())
        }
    }

    /// Columns written on the target (everything but generated columns).
    pub fn writable_columns(&self) -> impl Iterator<Item = &ColumnSpec> {
        self.columns.iter().filter(|c| !c.generated)
    }
}

/// A migration as stored.
#[derive(Debug, Clone)]
pub struct MigrationRecord {
    pub id: Uuid,
    pub name: String,
    pub source: Endpoint,
    pub target: Endpoint,
    pub table_patterns: Option<Vec<String>>,
    pub tables: Vec<TableSpec>,
    pub desired_state: DesiredState,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How the target's tables come to exist.
    pub schema_mode: SchemaMode,
}

/// How a migration's target tables come to exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    /// pgshift builds them from the source's schema (`pg_dump --schema-only`): the tables with
    /// their keys before the copy, everything else after it.
    Create,
    /// The operator created them; they must match the source's.
    #[default]
    Existing,
}

impl SchemaMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaMode::Create => "create",
            SchemaMode::Existing => "existing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "create" => Some(SchemaMode::Create),
            "existing" => Some(SchemaMode::Existing),
            _ => None,
        }
    }
}

impl MigrationRecord {
    /// Name of the schema pgshift installs on both the source and the target for this migration.
    pub fn schema_name(&self) -> String {
        format!("pgshift_{}", &self.id.simple().to_string()[..12])
    }
}

/// One state-changing API request, as recorded in the audit trail. Never holds a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewAuditEntry {
    /// When the request arrived.
    pub at: DateTime<Utc>,
    /// The token's subject, or `anonymous` when the token could not be checked (the store
    /// failed). Requests refused for want of a valid token are counted, not recorded.
    pub actor: String,
    /// The token's `jti`; `None` when anonymous.
    pub token_id: Option<String>,
    /// The token's role; `None` when anonymous.
    pub role: Option<String>,
    /// What was done, e.g. `migration.start`.
    pub action: String,
    pub method: String,
    /// The route pattern (`/api/v1/migrations/{name}/start`), never the raw path.
    pub route: String,
    /// `cluster` or `migration`, when the request names one.
    pub object_kind: Option<String>,
    pub object_name: Option<String>,
    pub client_ip: Option<String>,
    /// The HTTP status of the response.
    pub status: u16,
    /// The error code of a 4xx or 5xx response, when it had one.
    pub error_code: Option<String>,
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(flatten)]
    pub entry: NewAuditEntry,
}

/// Which audit entries to list: entries about the named migration or cluster (either, when both
/// are given; all when neither), newest first, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub migration: Option<String>,
    pub cluster: Option<String>,
    pub limit: u32,
}

/// An issued bearer token, as recorded so that it can be listed and revoked. The token itself is
/// not stored: it is verified by its signature, and `id` is its `jti` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: Uuid,
    /// Who the token is for.
    pub subject: String,
    pub role: crate::base::Role,
    /// The subject of the admin token that issued it, or `cli` for `pgshift token create`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A dashboard user. `password_hash` is an argon2id PHC string and never leaves the process.
#[derive(Clone)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub password_hash: String,
    pub role: crate::base::Role,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A signed-in dashboard session, stored by the SHA-256 of its cookie value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSession {
    /// Hex SHA-256 of the cookie value.
    pub token_hash: String,
    pub user_id: Uuid,
    /// The token every state-changing form must carry.
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}
