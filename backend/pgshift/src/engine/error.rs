//! Engine errors, classified so that callers know whether to retry, ask the operator, or report
//! the caller's mistake.

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
    #[error("cancelled")]
    Cancelled,
}

pub type EngineResult<T> = Result<T, EngineError>;

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
