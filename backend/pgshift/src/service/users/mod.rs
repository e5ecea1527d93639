//! Service layer: dashboard users: adding, listing, changing and removing them (each change ends
//! the user's sessions at once), and the first admin created on the first start. Passwords and
//! session tokens are made and checked in `password.rs`, the sign-in gate (attempts and password
//! hashing, bounded) is `throttle.rs`, and signing in and out, with the sessions it opens, is
//! `sessions.rs`.

mod password;
mod sessions;
mod throttle;

pub use password::{generate_password, hash_password, random_token};
pub use sessions::{session, sign_in, sign_out, NewSession, SignInError, SESSION_TTL};
pub use throttle::{Reservation, SignInThrottle};

use chrono::Utc;
use uuid::Uuid;

use super::{check_name, ServiceError, ServiceResult};
use crate::base::Role;
use crate::store::{Store, StoreError, User};
use password::decoy_hash;

/// The shortest password `user create` accepts.
pub const MIN_PASSWORD_LEN: usize = 12;
/// The name of the admin created on the first start.
pub const FIRST_ADMIN: &str = "admin";
/// The environment variable that sets the first admin's password.
pub const ADMIN_PASSWORD_ENV: &str = "PGSHIFT_ADMIN_PASSWORD";

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
