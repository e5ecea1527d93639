//! Store layer (PostgreSQL): dashboard users and their sessions, their times timestamptz as in
//! every other table.

use sqlx::postgres::PgPool;
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::store::rows::{self, map_unique};
use crate::store::{StoreResult, User, UserSession};

pub async fn insert_user(pool: &PgPool, u: &User) -> StoreResult<()> {
    sqlx::query("INSERT INTO pgshift_meta.app_user (id, name, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(u.id)
        .bind(&u.name)
        .bind(&u.password_hash)
        .bind(u.role.to_string())
        .bind(u.created_at)
        .execute(pool)
        .await
        .map_err(|e| map_unique(e, format!("user {:?}", u.name)))?;
    Ok(())
}

pub async fn user_by_name(pool: &PgPool, name: &str) -> StoreResult<Option<User>> {
    let row = sqlx::query("SELECT * FROM pgshift_meta.app_user WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(rows::user).transpose()
}

pub async fn user_by_id(pool: &PgPool, id: Uuid) -> StoreResult<Option<User>> {
    let row = sqlx::query("SELECT * FROM pgshift_meta.app_user WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(rows::user).transpose()
}

pub async fn count_users(pool: &PgPool) -> StoreResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM pgshift_meta.app_user")
            .fetch_one(pool)
            .await?,
    )
}

pub async fn list_users(pool: &PgPool) -> StoreResult<Vec<User>> {
    let rows = sqlx::query("SELECT * FROM pgshift_meta.app_user ORDER BY name")
        .fetch_all(pool)
        .await?;
    rows.iter().map(rows::user).collect()
}

/// Changes a user's password hash and role, and ends their sessions, in one transaction.
pub async fn update_user(pool: &PgPool, u: &User) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    let updated =
        sqlx::query("UPDATE pgshift_meta.app_user SET password_hash = $1, role = $2 WHERE id = $3")
            .bind(&u.password_hash)
            .bind(u.role.to_string())
            .bind(u.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    sqlx::query("DELETE FROM pgshift_meta.user_session WHERE user_id = $1")
        .bind(u.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(updated > 0)
}

/// Removes a user and their sessions in one transaction.
pub async fn delete_user(pool: &PgPool, id: Uuid) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM pgshift_meta.user_session WHERE user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let deleted = sqlx::query("DELETE FROM pgshift_meta.app_user WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(deleted > 0)
}

pub async fn insert_session(pool: &PgPool, s: &UserSession) -> StoreResult<()> {
    sqlx::query("INSERT INTO pgshift_meta.user_session (token_hash, user_id, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&s.token_hash)
        .bind(s.user_id)
        .bind(&s.csrf_token)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn session_by_hash(pool: &PgPool, hash: &str) -> StoreResult<Option<UserSession>> {
    let row = sqlx::query("SELECT * FROM pgshift_meta.user_session WHERE token_hash = $1")
        .bind(hash)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(rows::session).transpose()
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
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
