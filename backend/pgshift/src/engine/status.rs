//! Engine layer: the live state of each running migration, written by its tasks and read by the
//! API.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::target::TableState;
use crate::store::TableSpec;

/// What the migration's tasks are doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeState {
    /// Connecting and installing.
    Starting,
    Running,
    /// The last attempt failed; the supervisor retries with back-off.
    Retrying,
    Stopped,
}

/// One table's replication state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TableStatus {
    #[serde(skip)]
    pub table_no: i32,
    pub name: String,
    /// How rows are identified: `primary key`, `unique index <name>` or `whole row` (a table
    /// without a key, replicated as `REPLICA IDENTITY FULL` would).
    pub identity: String,
    /// pending, copying, catching_up, synced or error.
    pub state: String,
    pub rows_copied: i64,
    pub rows_estimated: Option<i64>,
    pub error: Option<String>,
    /// Objects of the table's schema pgshift still has to build on the target (schema
    /// `create`): its secondary indexes, constraints, triggers, foreign keys, the views using it…
    pub objects_pending: Vec<String>,
    /// Objects that could not be built, with the statement and the error.
    pub objects_failed: Vec<super::schema::ObjectFailure>,
}

/// A migration's live figures.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStatus {
    pub runtime: RuntimeState,
    /// Seconds between now (source clock) and the applied tick while changes are waiting; 0 when none wait.
    pub lag_seconds: Option<f64>,
    pub pending_events: Option<i64>,
    /// Newest tick taken on the source.
    pub last_tick: Option<i64>,
    /// Tick whose batch the target has applied.
    pub applied_tick: Option<i64>,
    pub applied_tick_time: Option<DateTime<Utc>>,
    pub events_applied: Option<i64>,
    pub tables: Vec<TableStatus>,
    pub error: Option<String>,
    /// Attempts that failed since this process started the migration.
    #[serde(skip)]
    pub failed_attempts: u64,
}

impl MigrationStatus {
    pub fn new(tables: &[TableSpec]) -> Self {
        Self {
            runtime: RuntimeState::Starting,
            lag_seconds: None,
            pending_events: None,
            last_tick: None,
            applied_tick: None,
            applied_tick_time: None,
            events_applied: None,
            tables: tables
                .iter()
                .map(|t| TableStatus {
                    table_no: t.no,
                    name: t.display_name(),
                    identity: t.identity(),
                    state: TableState::Pending.as_str().into(),
                    rows_copied: 0,
                    rows_estimated: None,
                    error: None,
                    objects_pending: Vec::new(),
                    objects_failed: Vec::new(),
                })
                .collect(),
            error: None,
            failed_attempts: 0,
        }
    }

    /// Whether every table is synced.
    pub fn all_synced(&self) -> bool {
        self.tables
            .iter()
            .all(|t| t.state == TableState::Synced.as_str())
    }
}

/// Shared, cheaply cloned handle on one migration's status.
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<RwLock<MigrationStatus>>);

impl StatusHandle {
    pub fn new(tables: &[TableSpec]) -> Self {
        Self(Arc::new(RwLock::new(MigrationStatus::new(tables))))
    }

    pub fn snapshot(&self) -> MigrationStatus {
        self.0.read().expect("status lock").clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut MigrationStatus)) {
        f(&mut self.0.write().expect("status lock"));
    }

    pub fn table_copy(
        &self,
        table_no: i32,
        state: TableState,
        rows_copied: i64,
        rows_estimated: Option<i64>,
    ) {
        self.update(|s| {
            if let Some(t) = s.tables.iter_mut().find(|t| t.table_no == table_no) {
                t.state = state.as_str().into();
                t.rows_copied = rows_copied;
                t.rows_estimated = rows_estimated.or(t.rows_estimated);
                t.error = None;
            }
        });
    }

    /// Records a failed attempt, on the table it belongs to when known.
    pub fn failed(&self, message: &str, table_no: Option<i32>) {
        self.update(|s| {
            s.runtime = RuntimeState::Retrying;
            s.error = Some(message.to_string());
            s.failed_attempts += 1;
            if let Some(t) = table_no.and_then(|no| s.tables.iter_mut().find(|t| t.table_no == no))
            {
                t.state = "error".into();
                t.error = Some(message.to_string());
            }
        });
    }

    pub fn running(&self) {
        self.update(|s| {
            s.runtime = RuntimeState::Running;
            s.error = None;
        });
    }
}
