//! Command-line layer (the API client): the exit codes of the client commands, which scripts can
//! rely on.

/// How a client command ended. Every non-zero exit also writes one line to stderr saying why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// The command line is wrong (unknown flag, missing token, malformed duration, …).
    Usage = 2,
    /// The server refused the request or failed (401, 403, 409, 422, 5xx, …).
    Api = 3,
    /// The named cluster, migration or token does not exist (404).
    NotFound = 4,
    /// `migration wait` reached its `--timeout` first.
    Timeout = 5,
    /// The server could not be reached at all (connection refused, DNS, TLS, no answer in time).
    Unreachable = 6,
    /// `migration verify` finished and found tables that differ between source and target.
    Differences = 7,
    /// The cutover or verification failed or was aborted (the line on stderr names the step).
    OperationFailed = 8,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}
