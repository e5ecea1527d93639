//! Engine layer: engine errors, classified so that callers know whether to retry, ask the operator,
//! or report the caller's mistake.

use crate::store::StoreError;

/// Something the engine could not do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The DSN does not parse. Never carries the DSN itself: it may hold a password.
    #[error("the connection string is not valid: {0}")]
    InvalidDsn(String),
    #[error("cannot reach {what}: {detail}")]
    Unreachable { what: String, detail: String },
    #[error("{what} refused the credentials: {detail}")]
    AuthenticationFailed { what: String, detail: String },
    #[error("database {database:?} does not exist on {what}")]
    DatabaseMissing { what: String, database: String },
    /// The request cannot work as given; `code` is a stable machine-readable reason.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// A privilege is missing; the message says which and how to grant it.
    #[error("{0}")]
    MissingPrivilege(String),
    /// A database error while working; usually worth retrying.
    #[error("{context}: {source}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    /// A failure tied to one replicated table, so the status can show it on that table.
    #[error("{source}")]
    OnTable {
        table_no: i32,
        #[source]
        source: Box<EngineError>,
    },
    /// Another session holds what pgshift needs (a lock on an application's table) for longer
    /// than pgshift makes the application wait; the message names the sessions.
    #[error("{0}")]
    Busy(String),
    /// The metadata store failed. An outage is the server's problem, not the caller's mistake,
    /// and the store's own text can carry internal detail: callers get [`EngineError::shown`],
    /// the log gets this.
    #[error("the metadata store failed: {0}")]
    Store(#[from] StoreError),
    #[error("cancelled")]
    Cancelled,
}

pub type EngineResult<T> = Result<T, EngineError>;

/// What a caller is told of a metadata-store failure; the detail is in the log.
pub const STORE_FAILED: &str = "the metadata store failed; the pgshift log has the details";

impl EngineError {
    /// The table a failure belongs to, if any.
    pub fn table_no(&self) -> Option<i32> {
        match self {
            EngineError::OnTable { table_no, .. } => Some(*table_no),
            _ => None,
        }
    }

    /// The SQLSTATE of the underlying database error, if any.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            EngineError::Database {
                source: sqlx::Error::Database(db),
                ..
            } => db.code().map(|c| c.into_owned()),
            EngineError::OnTable { source, .. } => source.sqlstate(),
            _ => None,
        }
    }

    pub fn on_table(self, table_no: i32) -> Self {
        match self {
            EngineError::Cancelled | EngineError::OnTable { .. } => self,
            other => EngineError::OnTable {
                table_no,
                source: Box::new(other),
            },
        }
    }

    /// The message for records a caller reads (an operation's error, a migration's last
    /// error): everything but a metadata-store failure's detail, which stays in the log.
    pub fn shown(&self) -> String {
        match self {
            EngineError::Store(StoreError::Duplicate(_) | StoreError::InUse(_)) => self.to_string(),
            EngineError::Store(_) => STORE_FAILED.to_string(),
            EngineError::OnTable { source, .. } => source.shown(),
            other => other.to_string(),
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        EngineError::Invalid {
            code,
            message: message.into(),
        }
    }
}

/// Adds what the engine was doing to a database error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> EngineResult<T>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn context(self, what: impl FnOnce() -> String) -> EngineResult<T> {
        self.map_err(|source| EngineError::Database {
            context: what(),
            source,
        })
    }
}
