//! Store layer (SQLite): dashboard users and their sessions. Times are fixed-width RFC 3339 text,
//! as in every other table, so expiry compares as text; a store from before, which kept them as
//! Unix seconds, is converted by `0006_user_times.sql` (tested below).

use sqlx::sqlite::SqlitePool;

use chrono::{DateTime, Utc};

use super::micros;
use crate::store::rows::{self, map_unique};
use crate::store::{StoreResult, User, UserSession};

pub async fn insert_user(pool: &SqlitePool, u: &User) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO app_user (id, name, password_hash, role, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(u.id.to_string())
    .bind(&u.name)
    .bind(&u.password_hash)
    .bind(u.role.to_string())
    .bind(micros(&u.created_at))
    .execute(pool)
    .await
    .map_err(|e| map_unique(e, format!("user {:?}", u.name)))?;
    Ok(())
}

pub async fn user_by(pool: &SqlitePool, column: &str, value: &str) -> StoreResult<Option<User>> {
    // `column` is one of two literals chosen by the caller, never user input.
    let sql = format!("SELECT * FROM app_user WHERE {column} = ?");
    let row = sqlx::query(&sql).bind(value).fetch_optional(pool).await?;
    row.as_ref().map(rows::user).transpose()
}

pub async fn count_users(pool: &SqlitePool) -> StoreResult<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM app_user")
        .fetch_one(pool)
        .await?)
}

pub async fn list_users(pool: &SqlitePool) -> StoreResult<Vec<User>> {
    let rows = sqlx::query("SELECT * FROM app_user ORDER BY name")
        .fetch_all(pool)
        .await?;
    rows.iter().map(rows::user).collect()
}

/// Changes a user's password hash and role, and ends their sessions, in one transaction.
pub async fn update_user(pool: &SqlitePool, u: &User) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query("UPDATE app_user SET password_hash = ?, role = ? WHERE id = ?")
        .bind(&u.password_hash)
        .bind(u.role.to_string())
        .bind(u.id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM user_session WHERE user_id = ?")
        .bind(u.id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(updated > 0)
}

/// Removes a user and their sessions in one transaction.
pub async fn delete_user(pool: &SqlitePool, id: uuid::Uuid) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM user_session WHERE user_id = ?")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    let deleted = sqlx::query("DELETE FROM app_user WHERE id = ?")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(deleted > 0)
}

pub async fn insert_session(pool: &SqlitePool, s: &UserSession) -> StoreResult<()> {
    sqlx::query("INSERT INTO user_session (token_hash, user_id, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)")
        .bind(&s.token_hash)
        .bind(s.user_id.to_string())
        .bind(&s.csrf_token)
        .bind(micros(&s.created_at))
        .bind(micros(&s.expires_at))
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn session_by_hash(pool: &SqlitePool, hash: &str) -> StoreResult<Option<UserSession>> {
    let row = sqlx::query("SELECT * FROM user_session WHERE token_hash = ?")
        .bind(hash)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(rows::session).transpose()
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
        .bind(micros(&now))
        .execute(pool)
        .await?
        .rows_affected())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::str::FromStr;

    use chrono::Utc;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
    use uuid::Uuid;

    use super::super::SqliteStore;
    use crate::store::Store;

    /// Users and sessions stored in Unix seconds, before the metadata migration that made their
    /// times text like every other table's, read back as the same times, and expiry still works.
    #[tokio::test]
    async fn users_and_sessions_in_unix_seconds_are_converted() {
        let root = std::env::temp_dir().join(format!("pgshift-usertimes-{}", Uuid::new_v4()));
        let (data, old) = (root.join("data"), root.join("migrations"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&old).unwrap();
        let all = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql/metadata/sqlite");
        for entry in std::fs::read_dir(&all).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().as_ref() < "0006" {
                std::fs::copy(entry.path(), old.join(entry.file_name())).unwrap();
            }
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(data.join("pgshift.db"))
            .create_if_missing(true)
            .foreign_keys(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(old.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let id = Uuid::new_v4();
        sqlx::query("INSERT INTO app_user VALUES (?, 'ann', 'hash', 'viewer', 1700000000)")
            .bind(id.to_string())
            .execute(&pool)
            .await
            .unwrap();
        for (hash, expires) in [("live", 4102444800_i64), ("gone", 1700000100)] {
            sqlx::query("INSERT INTO user_session VALUES (?, ?, 'csrf', 1700000000, ?)")
                .bind(hash)
                .bind(id.to_string())
                .bind(expires)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;

        let store = SqliteStore::open(&data).await.unwrap();
        let user = store.user_by_name("ann").await.unwrap().unwrap();
        assert_eq!(user.created_at.timestamp(), 1700000000);
        let live = store.session_by_hash("live").await.unwrap().unwrap();
        assert_eq!(live.user_id, id);
        assert_eq!(live.expires_at.timestamp(), 4102444800);
        assert_eq!(store.delete_expired_sessions(Utc::now()).await.unwrap(), 1);
        assert!(store.session_by_hash("gone").await.unwrap().is_none());
        // The sessions still belong to their user: removing one removes the other.
        sqlx::query("DELETE FROM app_user")
            .execute(&store.pool)
            .await
            .unwrap();
        assert!(store.session_by_hash("live").await.unwrap().is_none());
        std::fs::remove_dir_all(root).unwrap();
    }
}
