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

use super::{
    AuditEntry, AuditFilter, Cluster, DesiredState, Endpoint, MigrationRecord, NewAuditEntry,
    Operation, OperationState, Store, StoreError, StoreResult, TokenRecord,
};

use super::users_sql::sqlite as users;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/metadata/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `pgshift.db` in `data_dir` and applies pending metadata migrations.
    pub async fn open(data_dir: &Path) -> StoreResult<Self> {
        let path = data_dir.join("pgshift.db");
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

fn map_unique(err: sqlx::Error, what: String) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate(what),
        _ => StoreError::Database(err),
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

fn cluster_from_row(row: &SqliteRow) -> StoreResult<Cluster> {
    Ok(Cluster {
        id: parse_uuid(row.try_get("id")?)?,
        name: row.try_get("name")?,
        dsn: row.try_get("dsn")?,
        server_version: row.try_get("server_version")?,
        created_at: parse_time(row.try_get("created_at")?)?,
    })
}

fn migration_from_row(row: &SqliteRow) -> StoreResult<MigrationRecord> {
    let patterns: Option<String> = row.try_get("table_patterns")?;
    let tables: String = row.try_get("tables")?;
    let desired: String = row.try_get("desired_state")?;
    Ok(MigrationRecord {
        id: parse_uuid(row.try_get("id")?)?,
        name: row.try_get("name")?,
        source: Endpoint {
            cluster_id: parse_uuid(row.try_get("source_cluster")?)?,
            database: row.try_get("source_database")?,
        },
        target: Endpoint {
            cluster_id: parse_uuid(row.try_get("target_cluster")?)?,
            database: row.try_get("target_database")?,
        },
        table_patterns: patterns
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("table patterns: {e}")))?,
        tables: serde_json::from_str(&tables)
            .map_err(|e| StoreError::Corrupt(format!("tables: {e}")))?,
        desired_state: DesiredState::parse(&desired)
            .ok_or_else(|| StoreError::Corrupt(format!("desired state {desired:?}")))?,
        last_error: row.try_get("last_error")?,
        created_at: parse_time(row.try_get("created_at")?)?,
        updated_at: parse_time(row.try_get("updated_at")?)?,
    })
}

fn audit_from_row(row: &SqliteRow) -> StoreResult<AuditEntry> {
    let status: i64 = row.try_get("status")?;
    Ok(AuditEntry {
        id: row.try_get("id")?,
        entry: NewAuditEntry {
            at: parse_time(row.try_get("at")?)?,
            actor: row.try_get("actor")?,
            token_id: row.try_get("token_id")?,
            role: row.try_get("role")?,
            action: row.try_get("action")?,
            method: row.try_get("method")?,
            route: row.try_get("route")?,
            object_kind: row.try_get("object_kind")?,
            object_name: row.try_get("object_name")?,
            client_ip: row.try_get("client_ip")?,
            status: u16::try_from(status)
                .map_err(|_| StoreError::Corrupt(format!("audit status {status}")))?,
            error_code: row.try_get("error_code")?,
        },
    })
}

fn token_from_row(row: &SqliteRow) -> StoreResult<TokenRecord> {
    let role: String = row.try_get("role")?;
    let revoked: Option<String> = row.try_get("revoked_at")?;
    Ok(TokenRecord {
        id: parse_uuid(row.try_get("id")?)?,
        subject: row.try_get("subject")?,
        role: role
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("token role {role:?}")))?,
        created_by: row.try_get("created_by")?,
        created_at: parse_time(row.try_get("created_at")?)?,
        expires_at: parse_time(row.try_get("expires_at")?)?,
        revoked_at: revoked.as_deref().map(parse_time).transpose()?,
    })
}

fn micros(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("operation JSON serializes")
}

fn json_column<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("operation {what}: {e}")))
}

fn operation_from_row(row: &SqliteRow) -> StoreResult<Operation> {
    let state: String = row.try_get("state")?;
    let result: Option<String> = row.try_get("result")?;
    let finished: Option<String> = row.try_get("finished_at")?;
    Ok(Operation {
        id: parse_uuid(row.try_get("id")?)?,
        migration_id: parse_uuid(row.try_get("migration_id")?)?,
        migration_name: row.try_get("migration_name")?,
        kind: row.try_get("kind")?,
        state: OperationState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("operation state {state:?}")))?,
        requested_by: row.try_get("requested_by")?,
        request: json_column("request", row.try_get("request")?)?,
        steps: json_column("steps", row.try_get("steps")?)?,
        result: result.map(|r| json_column("result", &r)).transpose()?,
        error: row.try_get("error")?,
        created_at: parse_time(row.try_get("created_at")?)?,
        updated_at: parse_time(row.try_get("updated_at")?)?,
        finished_at: finished.map(|f| parse_time(&f)).transpose()?,
    })
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
        rows.iter().map(cluster_from_row).collect()
    }

    async fn cluster_by_name(&self, name: &str) -> StoreResult<Option<Cluster>> {
        let row = sqlx::query("SELECT * FROM cluster WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cluster_from_row).transpose()
    }

    async fn cluster_by_id(&self, id: Uuid) -> StoreResult<Option<Cluster>> {
        let row = sqlx::query("SELECT * FROM cluster WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cluster_from_row).transpose()
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
                                    table_patterns, tables, desired_state, last_error, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, format!("migration {:?}", m.name)))?;
        Ok(())
    }

    async fn list_migrations(&self) -> StoreResult<Vec<MigrationRecord>> {
        let rows = sqlx::query("SELECT * FROM migration ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(migration_from_row).collect()
    }

    async fn migration_by_name(&self, name: &str) -> StoreResult<Option<MigrationRecord>> {
        let row = sqlx::query("SELECT * FROM migration WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(migration_from_row).transpose()
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
        rows.iter().map(audit_from_row).collect()
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
        rows.iter().map(token_from_row).collect()
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

    async fn token_revoked(&self, id: Uuid) -> StoreResult<bool> {
        let revoked: Option<bool> =
            sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM token WHERE id = ?")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(revoked.unwrap_or(false))
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
        row.as_ref().map(operation_from_row).transpose()
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
        rows.iter().map(operation_from_row).collect()
    }

    async fn running_operations(&self) -> StoreResult<Vec<Operation>> {
        let rows =
            sqlx::query("SELECT * FROM operation WHERE state = 'running' ORDER BY created_at")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(operation_from_row).collect()
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
    async fn insert_user(&self, user: &super::User) -> StoreResult<()> {
        users::insert_user(&self.pool, user).await
    }

    async fn user_by_name(&self, name: &str) -> StoreResult<Option<super::User>> {
        users::user_by(&self.pool, "name", name).await
    }

    async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<super::User>> {
        users::user_by(&self.pool, "id", &id.to_string()).await
    }

    async fn count_users(&self) -> StoreResult<i64> {
        users::count_users(&self.pool).await
    }

    async fn insert_session(&self, session: &super::UserSession) -> StoreResult<()> {
        users::insert_session(&self.pool, session).await
    }

    async fn session_by_hash(&self, token_hash: &str) -> StoreResult<Option<super::UserSession>> {
        users::session_by_hash(&self.pool, token_hash).await
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        users::delete_session(&self.pool, token_hash).await
    }

    async fn delete_expired_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        users::delete_expired(&self.pool, now).await
    }
}
