//! Service layer: changing the table set of a migration (issue 10, section 3): adding the tables
//! patterns select, and no longer replicating one. Both are checked here, stored, and carried
//! out on both sides by the engine (engine/table_set.rs) with the migration's run stopped; the
//! run starts again with the new set, and copies an added table as at the start while the other
//! tables go on (their copies resume at their last chunk).

use serde::Deserialize;

use super::migrations::{cut_over, find, view, MigrationView};
use super::{App, ServiceError, ServiceResult};
use crate::engine::schema;
use crate::engine::{catalog, pg, resync, EngineError};
use crate::store::{DesiredState, MigrationRecord, SchemaMode, TableSpec};

/// Tables to add to a migration.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddTables {
    /// Patterns over `schema.table`, `*` matching any run of characters. Each must select at
    /// least one table that is not in the migration yet.
    pub tables: Vec<String>,
    /// Added tables that hold rows on the target (left there when they were removed from the
    /// migration before, say) are refused with `target_not_empty` unless this is `true`: then
    /// those rows are deleted and the tables copied again from the source.
    #[serde(default)]
    pub empty_target: bool,
}

/// Refuses a change of the table set of a cut-over migration.
fn changeable(record: &MigrationRecord, name: &str) -> ServiceResult<()> {
    if record.desired_state == DesiredState::CutOver {
        return Err(cut_over(name));
    }
    Ok(())
}

/// Adds the tables `add.tables` select that the migration does not have yet, checked as at
/// creation. A running migration copies them next; a paused one captures their changes from
/// now on and copies them when resumed; one not started yet installs them with the others.
pub async fn add(app: &App, name: &str, add: AddTables) -> ServiceResult<MigrationView> {
    let record = find(app, name).await?;
    changeable(&record, name)?;
    let (source, target) = app.supervisor.endpoints(&record).await?;
    let mut src = pg::connect("the source", &source).await?;
    let mut dst = pg::connect("the target", &target).await?;
    let all = catalog::user_tables(&mut src).await?;
    let patterns = add.tables.clone();
    // Matching many patterns against many tables is CPU work: off the async runtime.
    let selected =
        tokio::task::spawn_blocking(move || catalog::select_tables(&all, Some(&patterns)))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let known = |schema: &str, table: &str| {
        record
            .tables
            .iter()
            .any(|t| t.schema == schema && t.name == table)
    };
    for pattern in &add.tables {
        let new = selected.iter().any(|t| {
            catalog::pattern_matches(pattern, &t.display_name()) && !known(&t.schema, &t.name)
        });
        if !new {
            return Err(ServiceError::invalid(
                "already_in_migration",
                format!("table pattern {pattern:?} selects only tables migration {name:?} replicates already"),
            ));
        }
    }
    let fresh: Vec<catalog::CatalogTable> = selected
        .into_iter()
        .filter(|t| !known(&t.schema, &t.name))
        .collect();
    // New numbers after every number the migration ever gave out: events of a removed table
    // may still wait in the source's queue under its number.
    let last = record
        .tables
        .iter()
        .map(|t| t.no)
        .chain(app.store.last_table_no(record.id).await?)
        .max()
        .unwrap_or(0);
    let tables: Vec<TableSpec> = catalog::specs(&fresh)
        .into_iter()
        .map(|t| TableSpec {
            no: t.no + last,
            ..t
        })
        .collect();

    catalog::check_source(&mut src, &tables).await?;
    let present = schema::tables_on_target(&mut dst, &tables).await?;
    let is_present = |t: &TableSpec| present.contains(&t.display_name());
    let (there, missing): (Vec<TableSpec>, Vec<TableSpec>) =
        tables.iter().cloned().partition(is_present);
    match record.schema_mode {
        SchemaMode::Create if !missing.is_empty() => {
            let pg_bin_dir = app.supervisor.settings().pg_bin_dir.clone();
            schema::check_create(&mut src, &mut dst, &missing, pg_bin_dir.as_deref()).await?;
        }
        SchemaMode::Create => {}
        SchemaMode::Existing if !missing.is_empty() => {
            // check_target names the first missing table as at creation.
            catalog::check_target(&mut dst, &missing).await?;
        }
        SchemaMode::Existing => {}
    }
    // Tables on the target already (the operator's, or left from an earlier time in the
    // migration under schema "create") must match the source's as at creation.
    if !there.is_empty() {
        let differences = schema::compare(&mut src, &mut dst, &there).await?;
        if let Some(refused) = schema::differences_error(&differences) {
            return Err(refused.into());
        }
        catalog::check_key_collations(&mut src, &mut dst, &there).await?;
    }
    let with_rows = crate::engine::target_tables_with_rows(&mut dst, &there).await?;
    if !with_rows.is_empty() && !add.empty_target {
        return Err(EngineError::invalid(
            "target_not_empty",
            format!(
                "table(s) {} on the target have rows (left from an earlier time in the migration?); pgshift copies into empty tables: truncate them, or add them with empty_target to have pgshift delete those rows and copy the tables again",
                with_rows.join(", ")
            ),
        )
        .into());
    }
    drop((src, dst));

    // Held until the run is back: a pause, removal or operation meanwhile would be undone by
    // the restart.
    let _held = app
        .operations
        .hold(record.id, name, "a change of its tables".into())?;
    let record = find(app, name).await?;
    changeable(&record, name)?;
    if record.tables.iter().any(|t| {
        tables
            .iter()
            .any(|n| n.schema == t.schema && n.name == t.name)
    }) {
        return Err(ServiceError::conflict(
            "tables_changed",
            format!("the tables of migration {name:?} changed meanwhile; try again"),
        ));
    }
    app.supervisor.stop(record.id).await;
    let changed = async {
        if !with_rows.is_empty() {
            let emptied: Vec<TableSpec> = there
                .iter()
                .filter(|t| with_rows.contains(&t.display_name()))
                .cloned()
                .collect();
            resync::empty_tables(&target, &emptied).await?;
        }
        if record.schema_mode == SchemaMode::Existing && !there.is_empty() {
            let mut dst = pg::connect("the target", &target).await?;
            catalog::check_target(&mut dst, &there).await?;
        }
        Ok::<_, ServiceError>(())
    }
    .await;
    if let Err(e) = changed {
        restart(app, &record).await;
        return Err(e);
    }
    let mut updated = record.clone();
    updated.tables.extend(tables.iter().cloned());
    if let Some(patterns) = &mut updated.table_patterns {
        patterns.extend(add.tables.iter().cloned());
    }
    let last_no = updated.tables.iter().map(|t| t.no).max().unwrap_or(last);
    app.store
        .set_tables(
            updated.id,
            updated.table_patterns.as_deref(),
            &updated.tables,
            last_no,
        )
        .await?;
    if let Err(e) = app.supervisor.reconcile_tables(&updated).await {
        // Back to the tables before: the record, then both sides (what went in comes out).
        tracing::warn!(migration = %name, error = %e, "adding tables failed; going back to the tables before");
        let back = app
            .store
            .set_tables(
                record.id,
                record.table_patterns.as_deref(),
                &record.tables,
                last_no,
            )
            .await;
        if back.is_ok() {
            if let Err(e) = app.supervisor.reconcile_tables(&record).await {
                tracing::warn!(migration = %name, error = %e, "cannot remove what the failed addition installed yet; the run does it");
            }
        }
        restart(app, &record).await;
        return Err(e.into());
    }
    restart(app, &updated).await;
    tracing::info!(migration = %name, tables = %tables.iter().map(TableSpec::display_name).collect::<Vec<_>>().join(", "), "tables added");
    view(app, &updated).await
}

/// Stops replicating `table` (its unquoted `schema.table` name): its capture is removed from the
/// source and its state from the target; its rows on the target stay.
pub async fn remove(app: &App, name: &str, table: &str) -> ServiceResult<MigrationView> {
    let record = find(app, name).await?;
    changeable(&record, name)?;
    let spec = record
        .tables
        .iter()
        .find(|t| t.display_name() == table)
        .cloned()
        .ok_or_else(|| ServiceError::NotFound(format!("table {table:?} in migration {name:?}")))?;
    if record.tables.len() == 1 {
        return Err(ServiceError::conflict(
            "last_table",
            format!(
                "{table} is the only table of migration {name:?}; remove the migration instead"
            ),
        ));
    }
    let _held = app
        .operations
        .hold(record.id, name, format!("removing {table} from it"))?;
    app.supervisor.stop(record.id).await;
    let mut updated = record.clone();
    updated.tables.retain(|t| t.no != spec.no);
    let last_no = record.tables.iter().map(|t| t.no).max().unwrap_or(spec.no);
    app.store
        .set_tables(
            updated.id,
            updated.table_patterns.as_deref(),
            &updated.tables,
            last_no,
        )
        .await?;
    // The record no longer has the table: whatever happens next, the run (started again below)
    // removes what is left of it before anything else.
    let removed = app.supervisor.reconcile_tables(&updated).await;
    restart(app, &updated).await;
    removed?;
    tracing::info!(migration = %name, table = %table, "table no longer replicated");
    view(app, &updated).await
}

/// Starts the run again when the migration is meant to run.
async fn restart(app: &App, record: &MigrationRecord) {
    if record.desired_state != DesiredState::Running {
        return;
    }
    if let Err(e) = app.supervisor.start(record).await {
        tracing::error!(migration = %record.name, error = %e, "cannot start the migration's run again");
    }
}
