//! Store layer: users and sessions in both metadata backends. The SQL is the same but for
//! placeholders and id types, so each backend gets a small module here and its `Store` impl
//! delegates to it.

use chrono::{DateTime, TimeZone, Utc};

use super::{StoreError, StoreResult, User, UserSession};

fn time(secs: i64) -> StoreResult<DateTime<Utc>> {
    Utc.timestamp_opt(secs, 0)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {secs}")))
}

fn role(s: &str) -> StoreResult<crate::base::Role> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("user role {s:?}")))
}

fn map_unique(err: sqlx::Error, name: &str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Duplicate(format!("user {name:?}"))
        }
        _ => StoreError::Database(err),
    }
}

pub mod sqlite {
    use sqlx::sqlite::{SqlitePool, SqliteRow};
    use sqlx::Row;
    use uuid::Uuid;

    use super::*;

    fn user(row: &SqliteRow) -> StoreResult<User> {
        let id: String = row.try_get("id")?;
        Ok(User {
            id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(format!("id {id:?}: {e}")))?,
            name: row.try_get("name")?,
            password_hash: row.try_get("password_hash")?,
            role: role(row.try_get("role")?)?,
            created_at: time(row.try_get("created_at")?)?,
        })
    }

    fn session(row: &SqliteRow) -> StoreResult<UserSession> {
        let id: String = row.try_get("user_id")?;
        Ok(UserSession {
            token_hash: row.try_get("token_hash")?,
            user_id: Uuid::parse_str(&id)
                .map_err(|e| StoreError::Corrupt(format!("id {id:?}: {e}")))?,
            csrf_token: row.try_get("csrf_token")?,
            created_at: time(row.try_get("created_at")?)?,
            expires_at: time(row.try_get("expires_at")?)?,
        })
    }

    pub async fn insert_user(pool: &SqlitePool, u: &User) -> StoreResult<()> {
        sqlx::query("INSERT INTO app_user (id, name, password_hash, role, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(u.id.to_string())
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(u.role.to_string())
            .bind(u.created_at.timestamp())
            .execute(pool)
            .await
            .map_err(|e| map_unique(e, &u.name))?;
        Ok(())
    }

    pub async fn user_by(
        pool: &SqlitePool,
        column: &str,
        value: &str,
    ) -> StoreResult<Option<User>> {
        // `column` is one of two literals chosen by the caller, never user input.
        let sql = format!("SELECT * FROM app_user WHERE {column} = ?");
        let row = sqlx::query(&sql).bind(value).fetch_optional(pool).await?;
        row.as_ref().map(user).transpose()
    }

    pub async fn count_users(pool: &SqlitePool) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM app_user")
            .fetch_one(pool)
            .await?)
    }

    pub async fn insert_session(pool: &SqlitePool, s: &UserSession) -> StoreResult<()> {
        sqlx::query("INSERT INTO user_session (token_hash, user_id, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&s.token_hash)
            .bind(s.user_id.to_string())
            .bind(&s.csrf_token)
            .bind(s.created_at.timestamp())
            .bind(s.expires_at.timestamp())
            .execute(pool)
            .await?;
        Ok(())
    }

    pub async fn session_by_hash(
        pool: &SqlitePool,
        hash: &str,
    ) -> StoreResult<Option<UserSession>> {
        let row = sqlx::query("SELECT * FROM user_session WHERE token_hash = ?")
            .bind(hash)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(session).transpose()
    }

    pub async fn delete_session(pool: &SqlitePool, hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM user_session WHERE token_hash = ?")
            .bind(hash)
            .execute(pool)
            .await?;
        Ok(())
    }

    pub async fn delete_expired(pool: &SqlitePool, now: DateTime<Utc>) -> StoreResult<u64> {
        Ok(sqlx::query("DELETE FROM user_session WHERE expires_at < ?")
            .bind(now.timestamp())
            .execute(pool)
            .await?
            .rows_affected())
    }
}

pub mod postgres {
    use sqlx::postgres::{PgPool, PgRow};
    use sqlx::Row;
    use uuid::Uuid;

    use super::*;

    fn user(row: &PgRow) -> StoreResult<User> {
        Ok(User {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            password_hash: row.try_get("password_hash")?,
            role: role(row.try_get("role")?)?,
            created_at: time(row.try_get("created_at")?)?,
        })
    }

    fn session(row: &PgRow) -> StoreResult<UserSession> {
        Ok(UserSession {
            token_hash: row.try_get("token_hash")?,
            user_id: row.try_get("user_id")?,
            csrf_token: row.try_get("csrf_token")?,
            created_at: time(row.try_get("created_at")?)?,
            expires_at: time(row.try_get("expires_at")?)?,
        })
    }

    pub async fn insert_user(pool: &PgPool, u: &User) -> StoreResult<()> {
        sqlx::query("INSERT INTO pgshift_meta.app_user (id, name, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(u.id)
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(u.role.to_string())
            .bind(u.created_at.timestamp())
            .execute(pool)
            .await
            .map_err(|e| map_unique(e, &u.name))?;
        Ok(())
    }

    pub async fn user_by_name(pool: &PgPool, name: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query("SELECT * FROM pgshift_meta.app_user WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(user).transpose()
    }

    pub async fn user_by_id(pool: &PgPool, id: Uuid) -> StoreResult<Option<User>> {
        let row = sqlx::query("SELECT * FROM pgshift_meta.app_user WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(user).transpose()
    }

    pub async fn count_users(pool: &PgPool) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM pgshift_meta.app_user")
                .fetch_one(pool)
                .await?,
        )
    }

    pub async fn insert_session(pool: &PgPool, s: &UserSession) -> StoreResult<()> {
        sqlx::query("INSERT INTO pgshift_meta.user_session (token_hash, user_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&s.token_hash)
            .bind(s.user_id)
            .bind(&s.csrf_token)
            .bind(s.created_at.timestamp())
            .bind(s.expires_at.timestamp())
            .execute(pool)
            .await?;
        Ok(())
    }

    pub async fn session_by_hash(pool: &PgPool, hash: &str) -> StoreResult<Option<UserSession>> {
        let row = sqlx::query("SELECT * FROM pgshift_meta.user_session WHERE token_hash = $1")
            .bind(hash)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(session).transpose()
    }

    pub async fn delete_session(pool: &PgPool, hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM pgshift_meta.user_session WHERE token_hash = $1")
            .bind(hash)
            .execute(pool)
            .await?;
        Ok(())
    }

    pub async fn delete_expired(pool: &PgPool, now: DateTime<Utc>) -> StoreResult<u64> {
        Ok(
            sqlx::query("DELETE FROM pgshift_meta.user_session WHERE expires_at < $1")
                .bind(now.timestamp())
                .execute(pool)
                .await?
                .rows_affected(),
        )
    }
}
