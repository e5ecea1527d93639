//! Engine layer: changing the table set of a migration (issue 10, section 3). The record in the
//! store says which tables the migration replicates; [`reconcile`] brings the source's capture
//! and the target's bookkeeping in line with it, both ways:
//!
//! - a table of the record without a `table_state` row on the target is new: (schema "create")
//!   built on the target, checked empty there, its capture installed on the source, then its
//!   state recorded as `pending`. The run that starts next copies it exactly like a table at the
//!   start: its capture went in before any chunk's snapshot is taken, and the worker applies its
//!   events from the start of that run (the run was stopped meanwhile, so no worker skipped any
//!   of them; one that did would only have skipped changes every later chunk snapshot holds).
//! - a number the source captures or the target keeps a state for, that no table of the record
//!   has any more, was removed: its capture is dropped and its state forgotten (its rows on the
//!   target stay). Events of it still queued are skipped by the worker (no plan has its number).
//!
//! The service calls it with the run stopped, after storing the new table set, and every run
//! calls it before it starts its tasks: a crash anywhere in between ends in the record's set.

use std::path::Path;

use sqlx::postgres::PgConnectOptions;
use sqlx::PgConnection;

use super::{schema, source, target, EngineResult};
use crate::store::{MigrationRecord, TableSpec};

/// How long adding capture waits for each table's lock before giving up (as the first install).
const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a schema "create" migration builds added tables from.
pub struct Build<'a> {
    pub target: &'a PgConnectOptions,
    pub pg_bin_dir: Option<&'a Path>,
    pub dump: &'a schema::DumpSource,
}

/// What [`reconcile`] changed.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<i32>,
}

/// Brings both sides of an installed migration in line with the record's tables (see the module
/// notes). `build` is set for schema "create".
pub async fn reconcile(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    record: &MigrationRecord,
    build: Option<Build<'_>>,
) -> EngineResult<Changes> {
    let schema = record.schema_name();
    let captured = source::captured_tables(src, &schema).await?;
    let recorded = target::recorded_tables(dst, &schema).await?;
    let wanted: Vec<i32> = record.tables.iter().map(|t| t.no).collect();
    let mut changes = Changes::default();

    let mut gone: Vec<i32> = captured
        .iter()
        .chain(recorded.iter())
        .copied()
        .filter(|no| !wanted.contains(no))
        .collect();
    gone.sort_unstable();
    gone.dedup();
    for no in gone {
        if captured.contains(&no) {
            source::remove_table(src, &schema, no, None).await?;
        }
        if recorded.contains(&no) {
            target::remove_table(dst, &schema, no).await?;
        }
        tracing::info!(migration = %record.name, table_no = no, "stopped replicating a table");
        changes.removed.push(no);
    }

    let added: Vec<TableSpec> = record
        .tables
        .iter()
        .filter(|t| !recorded.contains(&t.no))
        .cloned()
        .collect();
    // Capture goes in before a table's copy begins: every change after its commit is queued,
    // every one before it is in the copy's snapshots. A table whose copy has not begun may lack
    // it (a crash between storing the set and installing it, then a new bookkeeping install).
    let progress = target::table_progress(dst, &schema).await?;
    let mut uncaptured = Vec::new();
    for t in record.tables.iter().filter(|t| !captured.contains(&t.no)) {
        match progress.iter().find(|p| p.table_no == t.no) {
            None => uncaptured.push(t.clone()),
            Some(p) if p.state == target::TableState::Pending && p.copy_position.is_none() => {
                uncaptured.push(t.clone())
            }
            Some(_) => {
                return Err(super::EngineError::invalid(
                    "capture_missing",
                    format!(
                        "the capture of {} is missing on the source although its copy began; remove the table from the migration and add it again",
                        t.display_name()
                    ),
                ))
            }
        }
    }
    if added.is_empty() {
        if !uncaptured.is_empty() {
            source::install_tables(src, &schema, &uncaptured, LOCK_TIMEOUT).await?;
        }
        return Ok(changes);
    }
    if let Some(b) = build {
        schema::prepare_added(src, dst, b.target, &schema, b.pg_bin_dir, b.dump, &added).await?;
    }
    let not_empty = target::tables_with_rows(dst, &added).await?;
    if !not_empty.is_empty() {
        return Err(super::EngineError::invalid(
            "target_not_empty",
            format!(
                "table(s) {} on the target have rows; pgshift copies into empty tables (truncate them, or add them again with empty_target)",
                not_empty.join(", ")
            ),
        ));
    }
    if !uncaptured.is_empty() {
        source::install_tables(src, &schema, &uncaptured, LOCK_TIMEOUT).await?;
    }
    target::add_tables(dst, &schema, &added).await?;
    for t in &added {
        tracing::info!(migration = %record.name, table = %t.display_name(), "added a table; it is copied next");
        changes.added.push(t.display_name());
    }
    Ok(changes)
}
