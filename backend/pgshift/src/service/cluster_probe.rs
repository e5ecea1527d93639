//! Service layer: "Test connection": connects with a DSN before it is stored and reports the server
//! version and what the role lacks to serve as a migration's source or target.

use serde::Serialize;
use sqlx::Row;

use super::ServiceResult;
use crate::engine::{catalog, pg, EngineError};

/// What a connection test found. Holds no part of the DSN's password.
#[derive(Debug, Serialize)]
pub struct ConnectionReport {
    pub server_version: String,
    pub user: String,
    pub database: String,
    pub superuser: bool,
    /// What the role lacks, each with the statement that grants it.
    pub missing: Vec<String>,
}

/// Connects (to the DSN's database, or `postgres`) and checks the database-wide privileges both
/// sides need: `CREATE` on the database (pgshift installs its schema) and, on a target, `TEMP`
/// (the copy's staging table) and setting `session_replication_role`. Table privileges are
/// checked per table when a migration is created.
pub async fn probe(dsn: &str) -> ServiceResult<ConnectionReport> {
    let options = pg::options(dsn, None)?;
    let options = if options.get_database().is_none() {
        options.database("postgres")
    } else {
        options
    };
    let mut conn = pg::connect("the server", &options).await?;
    let server_version = pg::server_version(&mut conn).await?;
    let row = sqlx::query(
        "SELECT current_user::text, current_database()::text,
                has_database_privilege(current_database(), 'CREATE'),
                (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                has_database_privilege(current_database(), 'TEMP')",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|source| EngineError::Database {
        context: "reading the role's privileges".into(),
        source,
    })?;
    let (user, database): (String, String) = (row.get(0), row.get(1));
    let (create, superuser, temp): (bool, bool, bool) = (row.get(2), row.get(3), row.get(4));
    let mut missing = Vec::new();
    if !create {
        missing.push(format!(
            "CREATE on database {database:?} (GRANT CREATE ON DATABASE {} TO {})",
            crate::engine::quote_ident(&database),
            crate::engine::quote_ident(&user)
        ));
    }
    if !temp {
        missing.push(format!(
            "TEMP on database {database:?}, needed on a target: the copy stages rows in a temporary table (GRANT TEMP ON DATABASE {} TO {})",
            crate::engine::quote_ident(&database),
            crate::engine::quote_ident(&user)
        ));
    }
    if !catalog::can_silence_triggers(&mut conn).await? {
        missing.push(format!(
            "setting session_replication_role, needed on a target (GRANT SET ON PARAMETER session_replication_role TO {})",
            crate::engine::quote_ident(&user)
        ));
    }
    Ok(ConnectionReport {
        server_version,
        user,
        database,
        superuser,
        missing,
    })
}
