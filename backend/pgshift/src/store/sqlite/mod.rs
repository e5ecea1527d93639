//! Store layer: the embedded metadata store: one SQLite file in the data directory.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
};
use sqlx::Row;
use uuid::Uuid;

use crate::store::{
    AuditEntry, AuditFilter, Cluster, DesiredState, MigrationRecord, NewAuditEntry, Operation,
    Store, StoreError, StoreResult, TableSpec, TokenRecord,
};

mod users;

use crate::store::rows::{self as decode, map_unique, Columns};

/// SQLite keeps ids, times (RFC 3339, microseconds) and JSON as text.
impl Columns for SqliteRow {
    fn text(&self, column: &str) -> StoreResult<String> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> StoreResult<i64> {
        Ok(self.try_get(column)?)
    }
    fn uuid(&self, column: &str) -> StoreResult<Uuid> {
        parse_uuid(self.try_get(column)?)
    }
    fn time(&self, column: &str) -> StoreResult<DateTime<Utc>> {
        parse_time(self.try_get(column)?)
    }
    fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        let text: Option<String> = self.try_get(column)?;
        text.as_deref().map(parse_time).transpose()
    }
    fn opt_json(&self, column: &str) -> StoreResult<Option<serde_json::Value>> {
        let text: Option<String> = self.try_get(column)?;
        text.map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/metadata/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
}

/// The metadata file in the data directory.
pub const DB_FILE: &str = "pgshift.db";
/// Every file SQLite keeps in the data directory: the database, its write-ahead log and shared
/// memory index, and a rollback journal.
pub const FILES: [&str; 4] = [
    DB_FILE,
    "pgshift.db-wal",
    "pgshift.db-shm",
    "pgshift.db-journal",
];

impl SqliteStore {
    /// Opens (creating if needed) `pgshift.db` in `data_dir` and applies pending metadata
    /// migrations. A new file is created empty and private (0600) before SQLite opens it, and
    /// SQLite gives its other files the database's mode.
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        match crate::base::DataDir::new(data_dir).write_private(DB_FILE, b"") {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Database(sqlx::Error::Io(e)))
            }
            _ => {}
        }
        let path = data_dir.join(DB_FILE);
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            // WAL + foreign keys: concurrent readers while the supervisor writes, and
            // referential integrity between migrations and clusters.
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

fn parse_uuid(s: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("id {s:?}: {e}")))
}

fn parse_time(s: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {s:?}: {e}")))
}

fn micros(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("operation JSON serializes")
}

fn now() -> String {
    Utc::now().to_rfc3339()
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_cluster(&self, c: &Cluster) -> StoreResult<()> {
        sqlx::query("INSERT INTO cluster (id, name, dsn, server_version, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(c.id.to_string())
            .bind(&c.name)
            .bind(&c.dsn)
            .bind(&c.server_version)
            .bind(c.created_at.to_rfc3339())
            .execute(&self.pool)
            .await
            .map_err(|e| map_unique(e, format!("cluster {:?}", c.name)))?;
        Ok(())
    }

    async fn list_clusters(&self) -> StoreResult<Vec<Cluster>> {
        let rows = sqlx::query("SELECT * FROM cluster ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode::cluster).collect()
    }

    async fn cluster_by_name(&self, name: &str) -> StoreResult<Option<Cluster>> {
        let row = sqlx::query("SELECT * FROM cluster WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::cluster).transpose()
    }

    async fn cluster_by_id(&self, id: Uuid) -> StoreResult<Option<Cluster>> {
        let row = sqlx::query("SELECT * FROM cluster WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::cluster).transpose()
    }

    async fn delete_cluster(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let user: Option<String> = sqlx::query_scalar(
            "SELECT name FROM migration WHERE source_cluster = ?1 OR target_cluster = ?1 LIMIT 1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(migration) = user {
            return Err(StoreError::InUse(format!("migration {migration:?}")));
        }
        sqlx::query("DELETE FROM cluster WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_migration(&self, m: &MigrationRecord) -> StoreResult<()> {
        let patterns = m
            .table_patterns
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("patterns serialize"));
        let tables = serde_json::to_string(&m.tables).expect("tables serialize");
        sqlx::query(
            "INSERT INTO migration (id, name, source_cluster, source_database, target_cluster, target_database,
                                    table_patterns, tables, desired_state, last_error, created_at, updated_at,
                                    schema_mode)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(m.id.to_string())
        .bind(&m.name)
        .bind(m.source.cluster_id.to_string())
        .bind(&m.source.database)
        .bind(m.target.cluster_id.to_string())
        .bind(&m.target.database)
        .bind(patterns)
        .bind(tables)
        .bind(m.desired_state.as_str())
        .bind(&m.last_error)
        .bind(m.created_at.to_rfc3339())
        .bind(m.updated_at.to_rfc3339())
        .bind(m.schema_mode.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, format!("migration {:?}", m.name)))?;
        Ok(())
    }

    async fn list_migrations(&self) -> StoreResult<Vec<MigrationRecord>> {
        let rows = sqlx::query("SELECT * FROM migration ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode::migration).collect()
    }

    async fn migration_by_name(&self, name: &str) -> StoreResult<Option<MigrationRecord>> {
        let row = sqlx::query("SELECT * FROM migration WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::migration).transpose()
    }

    async fn set_desired_state(&self, id: Uuid, state: DesiredState) -> StoreResult<()> {
        sqlx::query("UPDATE migration SET desired_state = ?, updated_at = ? WHERE id = ?")
            .bind(state.as_str())
            .bind(now())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_last_error(&self, id: Uuid, error: Option<&str>) -> StoreResult<()> {
        sqlx::query("UPDATE migration SET last_error = ?, updated_at = ? WHERE id = ?")
            .bind(error)
            .bind(now())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_tables(
        &self,
        id: Uuid,
        table_patterns: Option<&[String]>,
        tables: &[TableSpec],
        last_table_no: i32,
    ) -> StoreResult<()> {
        let patterns =
            table_patterns.map(|p| serde_json::to_string(p).expect("patterns serialize"));
        let tables = serde_json::to_string(tables).expect("tables serialize");
        sqlx::query(
            "UPDATE migration
                SET table_patterns = ?, tables = ?, updated_at = ?,
                    last_table_no = max(coalesce(last_table_no, 0), ?)
              WHERE id = ?",
        )
        .bind(patterns)
        .bind(tables)
        .bind(now())
        .bind(last_table_no)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn last_table_no(&self, id: Uuid) -> StoreResult<Option<i32>> {
        let no: Option<Option<i32>> =
            sqlx::query_scalar("SELECT last_table_no FROM migration WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(no.flatten())
    }

    async fn delete_migration(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query("DELETE FROM migration WHERE id = ?")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_audit(&self, e: &NewAuditEntry) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit (at, actor, token_id, role, action, method, route, object_kind,
                                object_name, client_ip, status, error_code)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        // Fixed width (microseconds, Z): text order is time order.
        .bind(e.at.to_rfc3339_opts(SecondsFormat::Micros, true))
        .bind(&e.actor)
        .bind(&e.token_id)
        .bind(&e.role)
        .bind(&e.action)
        .bind(&e.method)
        .bind(&e.route)
        .bind(&e.object_kind)
        .bind(&e.object_name)
        .bind(&e.client_ip)
        .bind(i64::from(e.status))
        .bind(&e.error_code)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM audit
             WHERE (?1 IS NULL AND ?2 IS NULL)
                OR (object_kind = 'migration' AND object_name = ?1)
                OR (object_kind = 'cluster' AND object_name = ?2)
             ORDER BY at DESC, id DESC
             LIMIT ?3",
        )
        .bind(&f.migration)
        .bind(&f.cluster)
        .bind(i64::from(f.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode::audit).collect()
    }

    async fn insert_token(&self, t: &TokenRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO token (id, subject, role, created_by, created_at, expires_at, revoked_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(t.id.to_string())
        .bind(&t.subject)
        .bind(t.role.to_string())
        .bind(&t.created_by)
        .bind(micros(&t.created_at))
        .bind(micros(&t.expires_at))
        .bind(t.revoked_at.as_ref().map(micros))
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, format!("token {}", t.id)))?;
        Ok(())
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let rows = sqlx::query("SELECT * FROM token ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode::token).collect()
    }

    async fn revoke_token(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE token SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?")
                .bind(micros(&at))
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn token_revoked(&self, id: Uuid) -> StoreResult<Option<bool>> {
        Ok(
            sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM token WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn insert_operation(&self, op: &Operation) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO operation (id, migration_id, migration_name, kind, state, requested_by, request,
                                    steps, result, error, created_at, updated_at, finished_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(op.id.to_string())
        .bind(op.migration_id.to_string())
        .bind(&op.migration_name)
        .bind(&op.kind)
        .bind(op.state.as_str())
        .bind(&op.requested_by)
        .bind(json_text(&op.request))
        .bind(json_text(&op.steps))
        .bind(op.result.as_ref().map(json_text))
        .bind(&op.error)
        .bind(micros(&op.created_at))
        .bind(micros(&op.updated_at))
        .bind(op.finished_at.as_ref().map(micros))
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, format!("operation {}", op.id)))?;
        Ok(())
    }

    async fn update_operation(&self, op: &Operation) -> StoreResult<()> {
        sqlx::query(
            "UPDATE operation SET state = ?, steps = ?, result = ?, error = ?, updated_at = ?, finished_at = ?
              WHERE id = ?",
        )
        .bind(op.state.as_str())
        .bind(json_text(&op.steps))
        .bind(op.result.as_ref().map(json_text))
        .bind(&op.error)
        .bind(micros(&op.updated_at))
        .bind(op.finished_at.as_ref().map(micros))
        .bind(op.id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn operation_by_id(&self, id: Uuid) -> StoreResult<Option<Operation>> {
        let row = sqlx::query("SELECT * FROM operation WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::operation).transpose()
    }

    async fn list_operations(
        &self,
        migration_name: &str,
        limit: u32,
    ) -> StoreResult<Vec<Operation>> {
        let rows = sqlx::query(
            "SELECT * FROM operation WHERE migration_name = ? ORDER BY created_at DESC, id DESC LIMIT ?",
        )
        .bind(migration_name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode::operation).collect()
    }

    async fn running_operations(&self) -> StoreResult<Vec<Operation>> {
        let rows =
            sqlx::query("SELECT * FROM operation WHERE state = 'running' ORDER BY created_at")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(decode::operation).collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
    async fn insert_user(&self, user: &crate::store::User) -> StoreResult<()> {
        users::insert_user(&self.pool, user).await
    }

    async fn user_by_name(&self, name: &str) -> StoreResult<Option<crate::store::User>> {
        users::user_by(&self.pool, "name", name).await
    }

    async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<crate::store::User>> {
        users::user_by(&self.pool, "id", &id.to_string()).await
    }

    async fn count_users(&self) -> StoreResult<i64> {
        users::count_users(&self.pool).await
    }

    async fn list_users(&self) -> StoreResult<Vec<crate::store::User>> {
        users::list_users(&self.pool).await
    }

    async fn update_user(&self, user: &crate::store::User) -> StoreResult<bool> {
        users::update_user(&self.pool, user).await
    }

    async fn delete_user(&self, id: Uuid) -> StoreResult<bool> {
        users::delete_user(&self.pool, id).await
    }

    async fn insert_session(&self, session: &crate::store::UserSession) -> StoreResult<()> {
        users::insert_session(&self.pool, session).await
    }

    async fn session_by_hash(
        &self,
        token_hash: &str,
    ) -> StoreResult<Option<crate::store::UserSession>> {
        users::session_by_hash(&self.pool, token_hash).await
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        users::delete_session(&self.pool, token_hash).await
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        users::delete_expired(&self.pool, now).await
    }
}
