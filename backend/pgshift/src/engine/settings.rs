//! Engine layer: the engine's tunables, read by the supervisor (which hands them to each run)
//! and by the run's ticker, worker and copy. Their own file so that the runner and the
//! supervisor need not import each other for them.

use std::time::Duration;

use super::ticker::TickerSettings;

/// Tunables of the engine; the defaults suit most migrations.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub ticker: TickerSettings,
    /// Rows per initial-copy chunk (one target transaction each).
    pub copy_chunk_rows: i64,
    /// Tables copied at once.
    pub copy_parallelism: usize,
    /// Events read from the source per round trip while applying a batch.
    pub fetch_events: usize,
    /// A worker that fell behind merges ticks into one batch up to this many events.
    pub batch_max_events: i64,
    /// Longest wait between retries of a failing migration.
    pub max_backoff: Duration,
    /// Where `pg_dump` and `pg_restore` are (schema `create`); None: the newest found in the
    /// usual PostgreSQL bin directories and `PATH`.
    pub pg_bin_dir: Option<std::path::PathBuf>,
    /// Longest time verification on demand holds back writes to one table on the source: the
    /// lock, the wait for the target to apply what was written before it, and what runs under
    /// it. When reached, the lock is released and that table is reported as not verified.
    pub verify_hold: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            ticker: TickerSettings::default(),
            copy_chunk_rows: 200_000,
            copy_parallelism: 2,
            fetch_events: 5_000,
            batch_max_events: 100_000,
            max_backoff: Duration::from_secs(30),
            pg_bin_dir: None,
            verify_hold: Duration::from_secs(5),
        }
    }
}
