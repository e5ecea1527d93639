//! Store layer: the shared metadata store: PostgreSQL, for several pgshift instances working from
//! one store. Everything pgshift owns sits in the schema `pgshift_meta` (sqlx's `_sqlx_migrations`
//! too).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Row};
use uuid::Uuid;

use crate::store::{
    AuditEntry, AuditFilter, Cluster, DesiredState, MigrationRecord, NewAuditEntry, Operation,
    Store, StoreError, StoreResult, TableSpec, TokenRecord,
};

mod users;

use crate::store::rows::{self as decode, map_unique, Columns};

/// PostgreSQL keeps ids as uuid, times as timestamptz and JSON as jsonb.
impl Columns for PgRow {
    fn text(&self, column: &str) -> StoreResult<String> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> StoreResult<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> StoreResult<i64> {
        // bigint columns, or integer ones (the audit status).
        match self.try_get::<i64, _>(column) {
            Ok(v) => Ok(v),
            Err(_) => Ok(i64::from(self.try_get::<i32, _>(column)?)),
        }
    }
    fn uuid(&self, column: &str) -> StoreResult<Uuid> {
        Ok(self.try_get(column)?)
    }
    fn time(&self, column: &str) -> StoreResult<DateTime<Utc>> {
        Ok(self.try_get(column)?)
    }
    fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(self.try_get(column)?)
    }
    fn opt_json(&self, column: &str) -> StoreResult<Option<serde_json::Value>> {
        Ok(self.try_get(column)?)
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/metadata/postgres");

/// The schema holding pgshift's metadata tables.
pub const SCHEMA: &str = "pgshift_meta";

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://` or `postgresql://`), creates the schema `pgshift_meta` if it
    /// is missing and applies pending metadata migrations. Errors never carry the URL's password.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Self::connect(url)
            .await
            .map_err(|e| scrub(e, &crate::base::redact::url_secrets(url)))
    }

    async fn connect(url: &str) -> StoreResult<Self> {
        // Whatever the database's owner set for search_path, none of their schemas is searched:
        // an operator or function of theirs would run as pgshift's role. pg_catalog comes first
        // (implicitly, when not listed), pg_temp last.
        let options =
            PgConnectOptions::from_str(url)?.options([("standard_conforming_strings", "on")]);
        // Create the schema first, on its own connection: the pool below sets search_path to it.
        // Only when missing, so that a role without CREATE on the database can use an existing one.
        let mut conn = options
            .clone()
            .options([("search_path", "pg_catalog,pg_temp")])
            .connect()
            .await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(SCHEMA)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            match sqlx::query("CREATE SCHEMA IF NOT EXISTS pgshift_meta")
                .execute(&mut conn)
                .await
            {
                Ok(_) => {}
                // Another instance created it at the same moment.
                Err(sqlx::Error::Database(db))
                    if db.is_unique_violation() || db.code().as_deref() == Some("42P06") => {}
                Err(e) => return Err(e.into()),
            }
        }
        conn.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            // pgshift_meta first: migrations create their tables unqualified.
            .connect_with(options.options([("search_path", format!("{SCHEMA},pg_temp"))]))
            .await?;
        // sqlx takes an advisory lock around migrations: several instances may start together.
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

/// Replaces an error whose text holds one of `secrets` (the URL's password) by one that does not.
fn scrub(err: StoreError, secrets: &[String]) -> StoreError {
    let text = err.to_string();
    if secrets.iter().any(|s| text.contains(s.as_str())) {
        StoreError::Database(sqlx::Error::Configuration(
            "cannot connect to the metadata database (the error text held the password and was withheld)".into(),
        ))
    } else {
        err
    }
}

fn steps_json(op: &Operation) -> serde_json::Value {
    serde_json::to_value(&op.steps).expect("operation steps serialize")
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_cluster(&self, c: &Cluster) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO pgshift_meta.cluster (id, name, dsn, server_version, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(c.id)
        .bind(&c.name)
        .bind(&c.dsn)
        .bind(&c.server_version)
        .bind(c.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, format!("cluster {:?}", c.name)))?;
        Ok(())
    }

    async fn list_clusters(&self) -> StoreResult<Vec<Cluster>> {
        // COLLATE "C": the same byte order as SQLite's, whatever the database's collation.
        let rows = sqlx::query("SELECT * FROM pgshift_meta.cluster ORDER BY name COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode::cluster).collect()
    }

    async fn cluster_by_name(&self, name: &str) -> StoreResult<Option<Cluster>> {
        let row = sqlx::query("SELECT * FROM pgshift_meta.cluster WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::cluster).transpose()
    }

    async fn cluster_by_id(&self, id: Uuid) -> StoreResult<Option<Cluster>> {
        let row = sqlx::query("SELECT * FROM pgshift_meta.cluster WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::cluster).transpose()
    }

    async fn delete_cluster(&self, id: Uuid) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let user: Option<String> = sqlx::query_scalar(
            "SELECT name FROM pgshift_meta.migration
             WHERE source_cluster = $1 OR target_cluster = $1 ORDER BY name LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(migration) = user {
            return Err(StoreError::InUse(format!("migration {migration:?}")));
        }
        sqlx::query("DELETE FROM pgshift_meta.cluster WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| match &e {
                // Another instance added a migration on this cluster since the check above.
                sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                    StoreError::InUse("a migration".into())
                }
                _ => StoreError::Database(e),
            })?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_migration(&self, m: &MigrationRecord) -> StoreResult<()> {
        let patterns = m
            .table_patterns
            .as_ref()
            .map(|p| serde_json::to_value(p).expect("patterns serialize"));
        let tables = serde_json::to_value(&m.tables).expect("tables serialize");
        sqlx::query(
            "INSERT INTO pgshift_meta.migration
                 (id, name, source_cluster, source_database, target_cluster, target_database,
                  table_patterns, tables, desired_state, last_error, created_at, updated_at, schema_mode)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(m.id)
        .bind(&m.name)
        .bind(m.source.cluster_id)
        .bind(&m.source.database)
        .bind(m.target.cluster_id)
        .bind(&m.target.database)
        .bind(patterns)
        .bind(tables)
        .bind(m.desired_state.as_str())
        .bind(&m.last_error)
        .bind(m.created_at)
        .bind(m.updated_at)
        .bind(m.schema_mode.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, format!("migration {:?}", m.name)))?;
        Ok(())
    }

    async fn list_migrations(&self) -> StoreResult<Vec<MigrationRecord>> {
        let rows = sqlx::query("SELECT * FROM pgshift_meta.migration ORDER BY name COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode::migration).collect()
    }

    async fn migration_by_name(&self, name: &str) -> StoreResult<Option<MigrationRecord>> {
        let row = sqlx::query("SELECT * FROM pgshift_meta.migration WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode::migration).transpose()
    }

    async fn set_desired_state(&self, id: Uuid, state: DesiredState) -> StoreResult<()> {
        sqlx::query(
            "UPDATE pgshift_meta.migration SET desired_state = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(state.as_str())
        .bind(Utc::now())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_last_error(&self, id: Uuid, error: Option<&str>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE pgshift_meta.migration SET last_error = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(error)
        .bind(Utc::now())
        .bind(id)
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
        let patterns = table_patterns.map(|p| serde_json::to_value(p).expect("patterns serialize"));
        let tables = serde_json::to_value(tables).expect("tables serialize");
        sqlx::query(
            "UPDATE pgshift_meta.migration
                SET table_patterns = $1, tables = $2, updated_at = $3,
                    last_table_no = greatest(last_table_no, $4)
              WHERE id = $5",
        )
        .bind(patterns)
        .bind(tables)
        .bind(Utc::now())
        .bind(last_table_no)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn last_table_no(&self, id: Uuid) -> StoreResult<Option<i32>> {
        let no: Option<Option<i32>> =
            sqlx::query_scalar("SELECT last_table_no FROM pgshift_meta.migration WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(no.flatten())
    }

    async fn delete_migration(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query("DELETE FROM pgshift_meta.migration WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn insert_audit(&self, e: &NewAuditEntry) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO pgshift_meta.audit
                 (at, actor, token_id, role, action, method, route, object_kind, object_name,
                  client_ip, status, error_code)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.token_id)
        .bind(&e.role)
        .bind(&e.action)
        .bind(&e.method)
        .bind(&e.route)
        .bind(&e.object_kind)
        .bind(&e.object_name)
        .bind(&e.client_ip)
        .bind(i32::from(e.status))
        .bind(&e.error_code)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_audit(&self, f: &AuditFilter) -> StoreResult<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT * FROM pgshift_meta.audit
             WHERE ($1::text IS NULL AND $2::text IS NULL)
                OR (object_kind = 'migration' AND object_name = $1)
                OR (object_kind = 'cluster' AND object_name = $2)
             ORDER BY at DESC, id DESC
             LIMIT $3",
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
            "INSERT INTO pgshift_meta.token
                 (id, subject, role, created_by, created_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(t.id)
        .bind(&t.subject)
        .bind(t.role.to_string())
        .bind(&t.created_by)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, format!("token {}", t.id)))?;
        Ok(())
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        let rows = sqlx::query("SELECT * FROM pgshift_meta.token ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode::token).collect()
    }

    async fn revoke_token(&self, id: Uuid, at: DateTime<Utc>) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE pgshift_meta.token SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn token_revoked(&self, id: Uuid) -> StoreResult<Option<bool>> {
        Ok(sqlx::query_scalar(
            "SELECT revoked_at IS NOT NULL FROM pgshift_meta.token WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn insert_operation(&self, op: &Operation) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO pgshift_meta.operation (id, migration_id, migration_name, kind, state, requested_by,
                                                 request, steps, result, error, created_at, updated_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(op.id)
        .bind(op.migration_id)
        .bind(&op.migration_name)
        .bind(&op.kind)
        .bind(op.state.as_str())
        .bind(&op.requested_by)
        .bind(&op.request)
        .bind(steps_json(op))
        .bind(&op.result)
        .bind(&op.error)
        .bind(op.created_at)
        .bind(op.updated_at)
        .bind(op.finished_at)
        .execute(&self.pool)
        .await
        .map_err(|e| map_unique(e, format!("operation {}", op.id)))?;
        Ok(())
    }

    async fn update_operation(&self, op: &Operation) -> StoreResult<()> {
        sqlx::query(
            "UPDATE pgshift_meta.operation
                SET state = $1, steps = $2, result = $3, error = $4, updated_at = $5, finished_at = $6
              WHERE id = $7",
        )
        .bind(op.state.as_str())
        .bind(steps_json(op))
        .bind(&op.result)
        .bind(&op.error)
        .bind(op.updated_at)
        .bind(op.finished_at)
        .bind(op.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn operation_by_id(&self, id: Uuid) -> StoreResult<Option<Operation>> {
        let row = sqlx::query("SELECT * FROM pgshift_meta.operation WHERE id = $1")
            .bind(id)
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
            "SELECT * FROM pgshift_meta.operation WHERE migration_name = $1
              ORDER BY created_at DESC, id DESC LIMIT $2",
        )
        .bind(migration_name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode::operation).collect()
    }

    async fn running_operations(&self) -> StoreResult<Vec<Operation>> {
        let rows = sqlx::query(
            "SELECT * FROM pgshift_meta.operation WHERE state = 'running' ORDER BY created_at",
        )
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
        users::user_by_name(&self.pool, name).await
    }

    async fn user_by_id(&self, id: Uuid) -> StoreResult<Option<crate::store::User>> {
        users::user_by_id(&self.pool, id).await
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
