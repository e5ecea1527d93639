//! Engine layer: connections to the clusters pgshift migrates between.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

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
/// Values hold no spaces: the startup `options` string is split on them. Right after connecting,
/// [`connect`] and [`pool`] also mark the session as pgshift's (see [`marker`]): capture records
/// nothing such a session writes, and the cutover's freeze lets it through. Capture fires in
/// `session_replication_role = replica` sessions too (`ENABLE ALWAYS`), so without the mark a
/// reverse migration armed on the new server would record the forward apply, and the forward
/// capture the reverse apply: every change echoed back.
pub const SESSION_SETTINGS: [(&str, &str); 3] = [
    ("search_path", "pg_catalog,pg_temp"),
    ("row_security", "off"),
    ("standard_conforming_strings", "on"),
];

pub mod marker;

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
        .options(SESSION_SETTINGS)
        // Row text (the copy's COPY, the worker's record input) must read as it was written.
        .options(super::row_format::startup_options());
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
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut conn = PgConnection::connect_with(options).await?;
        marker::mark_session(&mut conn).await?;
        Ok(conn)
    })
    .await;
    match connected {
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
        .after_connect(|conn, _| Box::pin(marker::mark_session(conn)))
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
/// `SET LOCAL lock_timeout` for the caller's transaction: each lock it waits for waits at most
/// `lock_timeout` (at least 1 ms: 0 would mean no limit).
pub async fn set_lock_timeout(
    conn: &mut PgConnection,
    lock_timeout: std::time::Duration,
) -> EngineResult<()> {
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    ))
    .execute(conn)
    .await
    .map_err(|source| EngineError::Database {
        context: "setting lock_timeout".into(),
        source,
    })?;
    Ok(())
}

pub async fn run_script(conn: &mut PgConnection, script: &str) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    conn.execute(sqlx::raw_sql(script)).await.map(|_| ())
}

/// How a statement that must lock the application's tables (dropping pgshift's triggers) waits
/// for them without making the application wait: PostgreSQL queues every later query on a table
/// behind a waiting `ACCESS EXCLUSIVE` request, so each attempt gives up after `lock_timeout`
/// and the next one comes after a pause.
#[derive(Debug, Clone, Copy)]
pub struct LockRetry {
    /// The longest one attempt waits for one lock: the longest the application's queries can
    /// queue behind pgshift.
    pub lock_timeout: Duration,
    /// No new attempt starts after this long.
    pub give_up_after: Duration,
    /// The pause after the first failed attempt; it doubles up to `max_pause`.
    pub first_pause: Duration,
    pub max_pause: Duration,
}

impl Default for LockRetry {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_millis(150),
            give_up_after: Duration::from_secs(30),
            first_pause: Duration::from_millis(100),
            max_pause: Duration::from_secs(2),
        }
    }
}

/// Runs `statement`, which locks `relations` (among others), under [`LockRetry`]: each attempt
/// with a short `lock_timeout`, retried with back-off while it fails on that timeout. Gives up
/// with [`EngineError::Busy`] naming the sessions that hold locks on `relations`, or with
/// [`EngineError::Cancelled`] as soon as `cancel` fires. `what` says what the statement does.
pub async fn run_with_short_locks(
    conn: &mut PgConnection,
    statement: &str,
    what: &str,
    relations: &[Oid],
    retry: LockRetry,
    cancel: Option<&CancellationToken>,
) -> EngineResult<()> {
    let context = |source| EngineError::Database {
        context: what.to_string(),
        source,
    };
    sqlx::query(&format!(
        "SET lock_timeout = '{}ms'",
        retry.lock_timeout.as_millis().max(1)
    ))
    .execute(&mut *conn)
    .await
    .map_err(context)?;
    let started = tokio::time::Instant::now();
    let mut pause = retry.first_pause;
    let mut attempts = 0u32;
    let outcome = loop {
        if cancel.is_some_and(|c| c.is_cancelled()) {
            break Err(EngineError::Cancelled);
        }
        attempts += 1;
        match sqlx::query(statement).execute(&mut *conn).await {
            Ok(_) => break Ok(()),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => {}
            Err(e) => break Err(context(e)),
        }
        if started.elapsed() + pause > retry.give_up_after {
            let holders = lock_holders(conn, relations).await;
            break Err(EngineError::Busy(format!(
                "{what}: gave up after {attempts} attempts in {} s, each waiting at most {} ms for a lock so that the application's queries never queue behind it for longer; {}; end those transactions (or wait for them) and try again",
                started.elapsed().as_secs(),
                retry.lock_timeout.as_millis(),
                holders
            )));
        }
        tracing::debug!(%what, attempts, "a lock is taken by another session; trying again");
        let sleep = tokio::time::sleep(pause);
        match cancel {
            Some(cancel) => tokio::select! {
                _ = cancel.cancelled() => break Err(EngineError::Cancelled),
                _ = sleep => {}
            },
            None => sleep.await,
        }
        pause = (pause * 2).min(retry.max_pause);
    };
    // The connection may be reused; a failure here matters less than the outcome.
    if let Err(e) = sqlx::query("RESET lock_timeout").execute(&mut *conn).await {
        tracing::debug!(error = %e, "resetting lock_timeout");
    }
    outcome
}

/// The sessions holding locks on `relations`, for an operator to act on: process id, role, state
/// and transaction age, and which locks (never their query text, which may hold data).
async fn lock_holders(conn: &mut PgConnection, relations: &[Oid]) -> String {
    let holders: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(
        "SELECT format('pid %s (role %s, %s, transaction open for %s s) holds %s',
                       a.pid, a.usename, coalesce(a.state, 'unknown state'),
                       coalesce(round(extract(epoch FROM clock_timestamp() - a.xact_start))::text, '?'),
                       string_agg(DISTINCT l.mode || ' on ' || l.relation::regclass::text, ', '))
           FROM pg_locks l
           JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.granted AND l.locktype = 'relation' AND l.relation = ANY($1)
            AND l.pid <> pg_backend_pid()
          GROUP BY a.pid, a.usename, a.state, a.xact_start
          ORDER BY a.xact_start NULLS LAST
          LIMIT 10",
    )
    .bind(relations)
    .fetch_all(&mut *conn)
    .await;
    match holders {
        Ok(h) if !h.is_empty() => format!("sessions holding locks: {}", h.join("; ")),
        Ok(_) => "the sessions that held the locks are gone now".into(),
        Err(e) => {
            tracing::warn!(error = %e, "listing the sessions that hold locks");
            "the sessions holding the locks could not be listed".into()
        }
    }
}
