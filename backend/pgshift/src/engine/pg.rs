//! Connections to the clusters pgshift migrates between.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};

use super::{EngineError, EngineResult};

/// How long to wait for a server to answer before calling it unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Session settings every connection to a source or target starts with. They are sent in the
/// startup packet, after the DSN's own `options`, so they win over the DSN and over anything a
/// database or role owner set with `ALTER DATABASE`/`ALTER ROLE … SET`:
/// - `search_path`: a database owner could otherwise put a schema of theirs in front of
///   `pg_catalog` and have pgshift's role run their `txid_current_snapshot()` or `=`. pgshift
///   schema-qualifies its own objects and users' tables; `pg_temp` last keeps the copy's temporary
///   tables reachable without letting them shadow anything.
/// - `row_security = off`: a table whose row-level security applies to pgshift's role makes a
///   query fail instead of silently returning (and copying, and counting) fewer rows.
/// - `standard_conforming_strings = on`: the meaning of pgshift's string literals does not depend
///   on a setting the database owner controls.
///
/// Values hold no spaces: the startup `options` string is split on them.
pub const SESSION_SETTINGS: [(&str, &str); 3] = [
    ("search_path", "pg_catalog,pg_temp"),
    ("row_security", "off"),
    ("standard_conforming_strings", "on"),
];

/// Parses a cluster DSN and points it at `database` (or keeps the DSN's own database). Every
/// connection made from these options runs with [`SESSION_SETTINGS`].
pub fn options(dsn: &str, database: Option<&str>) -> EngineResult<PgConnectOptions> {
    // sqlx's parse error may echo parts of the DSN: report only that it failed and why in general terms.
    if !(dsn.starts_with("postgresql://") || dsn.starts_with("postgres://")) {
        return Err(EngineError::InvalidDsn(
            "it must be a URL starting with postgresql:// (postgresql://user:password@host:port/database)".into(),
        ));
    }
    let options = PgConnectOptions::from_str(dsn)
        .map_err(|_| {
            EngineError::InvalidDsn("expected postgresql://user:password@host:port/database".into())
        })?
        .application_name("pgshift")
        // Replication statements are generated per table; a bigger cache keeps them prepared.
        .statement_cache_capacity(256)
        .log_statements(tracing::log::LevelFilter::Trace)
        .options(SESSION_SETTINGS);
    Ok(match database {
        Some(db) => options.database(db),
        None => options,
    })
}

/// Turns a connection failure into an error an operator can act on.
pub fn classify_connect_error(what: &str, database: &str, err: sqlx::Error) -> EngineError {
    if let sqlx::Error::Database(db) = &err {
        match db.code().as_deref() {
            Some("28P01") | Some("28000") => {
                return EngineError::AuthenticationFailed {
                    what: what.into(),
                    detail: db.message().into(),
                }
            }
            Some("3D000") => {
                return EngineError::DatabaseMissing {
                    what: what.into(),
                    database: database.into(),
                }
            }
            Some("42501") => {
                return EngineError::MissingPrivilege(format!("{what}: {}", db.message()))
            }
            _ => {}
        }
    }
    EngineError::Unreachable {
        what: what.into(),
        detail: err.to_string(),
    }
}

/// One connection, with a bounded connect time.
pub async fn connect(what: &str, options: &PgConnectOptions) -> EngineResult<PgConnection> {
    let database = options.get_database().unwrap_or("").to_string();
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(classify_connect_error(what, &database, err)),
        Err(_) => Err(EngineError::Unreachable {
            what: what.into(),
            detail: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        }),
    }
}

/// A small pool for one side of a running migration. Connections that break (server restart)
/// are replaced on the next acquire.
pub async fn pool(what: &str, options: &PgConnectOptions, size: u32) -> EngineResult<PgPool> {
    let database = options.get_database().unwrap_or("").to_string();
    PgPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(CONNECT_TIMEOUT)
        .test_before_acquire(true)
        .connect_with(options.clone())
        .await
        .map_err(|e| classify_connect_error(what, &database, e))
}

/// `server_version` of a connected server, e.g. "15.19".
pub async fn server_version(conn: &mut PgConnection) -> EngineResult<String> {
    sqlx::query_scalar("SHOW server_version")
        .fetch_one(conn)
        .await
        .map_err(|source| EngineError::Database {
            context: "reading the server version".into(),
            source,
        })
}

/// Runs a multi-statement SQL script (the files under `sql/`) in one round trip.
pub async fn run_script(conn: &mut PgConnection, script: &str) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    conn.execute(sqlx::raw_sql(script)).await.map(|_| ())
}
