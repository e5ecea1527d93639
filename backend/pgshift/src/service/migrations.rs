//! Service layer: creating, running and removing migrations.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::clusters;
use super::{check_name, App, ServiceError, ServiceResult};
use crate::engine::cutover::sequences::SequenceDrift;
use crate::engine::schema::{self, Difference};
use crate::engine::{catalog, pg, MigrationStatus, RuntimeState, TableStatus};
use crate::store::{DesiredState, Endpoint, MigrationRecord, SchemaMode};

#[derive(Debug, Deserialize, Serialize, Clone, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRef {
    pub cluster: String,
    pub database: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMigration {
    pub name: String,
    pub source: EndpointRef,
    pub target: EndpointRef,
    /// Patterns over `schema.table`, `*` matching any run of characters; None = every table.
    pub tables: Option<Vec<String>>,
    /// `create`: pgshift builds the target's tables from the source's schema (the default when
    /// none of the selected tables exists on the target); `existing`: the operator made them, and
    /// they must match the source's.
    pub schema: Option<SchemaMode>,
}

/// A migration as callers see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MigrationView {
    pub name: String,
    /// created, starting, copying, catching_up, synced, paused or error.
    pub state: String,
    pub lag_seconds: Option<f64>,
    pub pending_events: Option<i64>,
    pub last_tick: Option<i64>,
    pub applied_tick: Option<i64>,
    pub events_applied: Option<i64>,
    pub source: EndpointRef,
    pub target: EndpointRef,
    pub table_patterns: Option<Vec<String>>,
    /// How the target's tables came to exist: `create` (built by pgshift) or `existing`.
    pub schema: SchemaMode,
    pub tables: Vec<TableStatus>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Each sequence's value on the source and the target (single-migration reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequences: Option<Vec<SequenceDrift>>,
    /// How the migrated tables differ between the two sides now: column, type, nullability,
    /// key (single-migration reads only, once the target's tables exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differences: Option<Vec<Difference>>,
}

fn overall_state(record: &MigrationRecord, status: &MigrationStatus) -> &'static str {
    match record.desired_state {
        DesiredState::Created => "created",
        DesiredState::Paused => "paused",
        DesiredState::CutOver => "cut_over",
        DesiredState::Running => {
            if status.runtime == RuntimeState::Retrying {
                "error"
            } else if status.runtime == RuntimeState::Starting && status.applied_tick.is_none() {
                "starting"
            } else if status.all_synced() {
                "synced"
            } else if status
                .tables
                .iter()
                .any(|t| t.state == "pending" || t.state == "copying")
            {
                "copying"
            } else {
                "catching_up"
            }
        }
    }
}

async fn endpoint_ref(app: &App, e: &Endpoint) -> ServiceResult<EndpointRef> {
    let cluster = app.store.cluster_by_id(e.cluster_id).await?;
    Ok(EndpointRef {
        cluster: cluster
            .map(|c| c.name)
            .unwrap_or_else(|| "(removed)".into()),
        database: e.database.clone(),
    })
}

pub(super) async fn view(app: &App, record: &MigrationRecord) -> ServiceResult<MigrationView> {
    let status = match app.supervisor.status(record.id) {
        Some(s) => s,
        None if record.desired_state == DesiredState::Created => MigrationStatus::new(&record.tables),
        None => app.supervisor.inspect(record).await.unwrap_or_else(|err| {
            tracing::debug!(migration = %record.name, error = %err, "cannot read the target's state");
            MigrationStatus::new(&record.tables)
        }),
    };
    Ok(MigrationView {
        name: record.name.clone(),
        state: overall_state(record, &status).into(),
        lag_seconds: status.lag_seconds,
        pending_events: status.pending_events,
        last_tick: status.last_tick,
        applied_tick: status.applied_tick,
        events_applied: status.events_applied,
        source: endpoint_ref(app, &record.source).await?,
        target: endpoint_ref(app, &record.target).await?,
        table_patterns: record.table_patterns.clone(),
        schema: record.schema_mode,
        error: status.error.clone().or_else(|| {
            (record.desired_state == DesiredState::Running
                && status.runtime == RuntimeState::Retrying)
                .then(|| record.last_error.clone())
                .flatten()
        }),
        tables: status.tables,
        created_at: record.created_at,
        updated_at: record.updated_at,
        sequences: None,
        differences: None,
    })
}

/// Checks everything before storing: both databases answer, the patterns select tables with
/// primary keys, the target has the same tables, and both roles have the privileges needed.
pub async fn create(app: &App, new: NewMigration) -> ServiceResult<MigrationView> {
    check_name("migration", &new.name)?;
    if app.store.migration_by_name(&new.name).await?.is_some() {
        return Err(ServiceError::conflict(
            "duplicate_name",
            format!("migration {:?} already exists", new.name),
        ));
    }
    for (side, e) in [("source", &new.source), ("target", &new.target)] {
        if e.database.is_empty() {
            return Err(ServiceError::invalid(
                "invalid_database",
                format!("{side}.database is empty"),
            ));
        }
    }
    let find = |side: &'static str, name: String| async move {
        clusters::find(app, &name).await.map_err(|e| match e {
            ServiceError::NotFound(_) => ServiceError::invalid(
                "unknown_cluster",
                format!("{side} cluster {name:?} is not registered"),
            ),
            other => other,
        })
    };
    let source = find("source", new.source.cluster.clone()).await?;
    let target = find("target", new.target.cluster.clone()).await?;
    if source.id == target.id && new.source.database == new.target.database {
        return Err(ServiceError::invalid(
            "same_database",
            "source and target are the same database",
        ));
    }
    let mut src = pg::connect(
        "the source",
        &pg::options(
            &app.secrets.decrypt(&source.dsn)?,
            Some(&new.source.database),
        )?,
    )
    .await?;
    let mut dst = pg::connect(
        "the target",
        &pg::options(
            &app.secrets.decrypt(&target.dsn)?,
            Some(&new.target.database),
        )?,
    )
    .await?;
    let all = catalog::user_tables(&mut src).await?;
    // Matching many patterns against many tables is CPU work: off the async runtime.
    let patterns = new.tables.clone();
    let selected =
        tokio::task::spawn_blocking(move || catalog::select_tables(&all, patterns.as_deref()))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let tables = catalog::specs(&selected);
    let schema_mode = match new.schema {
        Some(mode) => mode,
        None if schema::tables_on_target(&mut dst, &tables)
            .await?
            .is_empty() =>
        {
            SchemaMode::Create
        }
        None => SchemaMode::Existing,
    };
    catalog::check_source(&mut src, &tables).await?;
    match schema_mode {
        SchemaMode::Create => {
            let pg_bin_dir = app.supervisor.settings().pg_bin_dir.clone();
            schema::check_create(&mut src, &mut dst, &tables, pg_bin_dir.as_deref()).await?;
        }
        SchemaMode::Existing => {
            let differences = schema::compare(&mut src, &mut dst, &tables).await?;
            if let Some(refused) = schema::differences_error(&differences) {
                return Err(refused.into());
            }
            catalog::check_target(&mut dst, &tables).await?;
            catalog::check_key_collations(&mut src, &mut dst, &tables).await?;
        }
    }
    let now = Utc::now();
    let record = MigrationRecord {
        id: Uuid::new_v4(),
        name: new.name,
        source: Endpoint {
            cluster_id: source.id,
            database: new.source.database,
        },
        target: Endpoint {
            cluster_id: target.id,
            database: new.target.database,
        },
        table_patterns: new.tables,
        tables,
        desired_state: DesiredState::Created,
        last_error: None,
        created_at: now,
        updated_at: now,
        schema_mode,
    };
    app.store.insert_migration(&record).await?;
    tracing::info!(migration = %record.name, tables = record.tables.len(), "migration created");
    view(app, &record).await
}

pub async fn find(app: &App, name: &str) -> ServiceResult<MigrationRecord> {
    app.store
        .migration_by_name(name)
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("migration {name:?}")))
}

pub async fn get(app: &App, name: &str) -> ServiceResult<MigrationView> {
    let record = find(app, name).await?;
    let mut v = view(app, &record).await?;
    v.sequences = super::cutover::sequence_drift(app, &record).await;
    v.differences = differences(app, &record).await;
    Ok(v)
}

/// How the migrated tables differ between the two sides now; None when a side cannot be read,
/// or while pgshift has still to build the target's tables.
async fn differences(app: &App, record: &MigrationRecord) -> Option<Vec<Difference>> {
    if record.desired_state == DesiredState::CutOver {
        return None;
    }
    let read = async {
        let (source, target) = app.supervisor.endpoints(record).await?;
        let mut src = pg::connect("the source", &source).await?;
        let mut dst = pg::connect("the target", &target).await?;
        if record.schema_mode == SchemaMode::Create
            && schema::tables_on_target(&mut dst, &record.tables)
                .await?
                .len()
                < record.tables.len()
        {
            return Ok(None);
        }
        schema::compare(&mut src, &mut dst, &record.tables)
            .await
            .map(Some)
    };
    read.await.unwrap_or_else(|e: crate::engine::EngineError| {
        tracing::debug!(migration = %record.name, error = %e, "cannot compare the two sides' tables");
        None
    })
}

pub async fn list(app: &App) -> ServiceResult<Vec<MigrationView>> {
    let mut out = Vec::new();
    for record in app.store.list_migrations().await? {
        out.push(view(app, &record).await?);
    }
    Ok(out)
}

async fn run(app: &App, mut record: MigrationRecord) -> ServiceResult<MigrationView> {
    app.store
        .set_desired_state(record.id, DesiredState::Running)
        .await?;
    record.desired_state = DesiredState::Running;
    app.supervisor.start(&record).await?;
    tracing::info!(migration = %record.name, "migration started");
    view(app, &record).await
}

/// Installs capture and starts copying. Starting a running migration changes nothing.
pub async fn start(app: &App, name: &str) -> ServiceResult<MigrationView> {
    let record = find(app, name).await?;
    match record.desired_state {
        DesiredState::Created | DesiredState::Running => run(app, record).await,
        DesiredState::Paused => Err(ServiceError::conflict(
            "paused",
            format!("migration {name:?} is paused; resume it"),
        )),
        DesiredState::CutOver => Err(cut_over(name)),
    }
}

/// Stops applying; the source keeps capturing, so nothing is lost while paused.
pub async fn pause(app: &App, name: &str) -> ServiceResult<MigrationView> {
    let mut record = find(app, name).await?;
    match record.desired_state {
        DesiredState::Created => Err(ServiceError::conflict(
            "not_started",
            format!("migration {name:?} has not been started"),
        )),
        DesiredState::CutOver => Err(cut_over(name)),
        DesiredState::Paused | DesiredState::Running => {
            // A cutover or verification would start the run again when it ends; a resync as
            // soon as its table is reset.
            let _held = app.operations.hold(record.id, name, "a pause".into())?;
            app.store
                .set_desired_state(record.id, DesiredState::Paused)
                .await?;
            app.supervisor.stop(record.id).await;
            record.desired_state = DesiredState::Paused;
            tracing::info!(migration = %name, "migration paused");
            view(app, &record).await
        }
    }
}

pub async fn resume(app: &App, name: &str) -> ServiceResult<MigrationView> {
    let record = find(app, name).await?;
    match record.desired_state {
        DesiredState::Created => Err(ServiceError::conflict(
            "not_started",
            format!("migration {name:?} has not been started; start it"),
        )),
        DesiredState::CutOver => Err(cut_over(name)),
        DesiredState::Paused | DesiredState::Running => run(app, record).await,
    }
}

/// Copies one table again from the source (`table` is its unquoted `schema.table` name): the
/// table is emptied on the target and copied while the migration keeps running.
pub async fn resync_table(app: &App, name: &str, table: &str) -> ServiceResult<MigrationView> {
    let record = find(app, name).await?;
    match record.desired_state {
        DesiredState::Running => {}
        DesiredState::CutOver => return Err(cut_over(name)),
        DesiredState::Created | DesiredState::Paused => {
            return Err(ServiceError::conflict(
                "not_running",
                format!("migration {name:?} is not running; start or resume it before a resync"),
            ))
        }
    }
    let spec = record
        .tables
        .iter()
        .find(|t| t.display_name() == table)
        .cloned()
        .ok_or_else(|| ServiceError::NotFound(format!("table {table:?} in migration {name:?}")))?;
    // Held until the run is back: a pause or removal meanwhile would be undone by the restart.
    let _held = app
        .operations
        .hold(record.id, name, format!("a resync of {table}"))?;
    // The run stops at a batch boundary, the table is reset, and the new run copies it.
    app.supervisor.stop(record.id).await;
    let reset = match app.supervisor.endpoints(&record).await {
        Ok((_, target)) => {
            crate::engine::resync::reset_table(&target, &record.schema_name(), &spec).await
        }
        Err(e) => Err(e),
    };
    // Whatever happened, the migration runs again.
    app.supervisor.start(&record).await?;
    reset?;
    tracing::info!(migration = %name, table = %table, "table resync started");
    view(app, &record).await
}

/// A cut-over migration is finished: the application writes to the target now.
pub(super) fn cut_over(name: &str) -> ServiceError {
    ServiceError::conflict(
        "cut_over",
        format!("migration {name:?} has been cut over; nothing runs any more (remove it, or cut back with its reverse migration)"),
    )
}

/// Removes everything pgshift installed on both sides, then forgets the migration.
/// Removing a cut-over migration drops the freeze on its old server too, which takes writes
/// again (writes the new server never sees): only when the caller says so (`unfreeze_source`).
pub async fn remove(app: &App, name: &str, unfreeze_source: bool) -> ServiceResult<()> {
    let record = find(app, name).await?;
    if record.desired_state == DesiredState::CutOver && !unfreeze_source {
        return Err(ServiceError::conflict(
            "unfreeze_source_required",
            format!(
                "migration {name:?} was cut over: removing it lifts the freeze on its old server, which then takes writes the new server never sees; repeat with unfreeze_source=true if that is what you want"
            ),
        ));
    }
    let _held = app.operations.hold(record.id, name, "a removal".into())?;
    app.supervisor.remove(&record).await?;
    app.store.delete_migration(record.id).await?;
    tracing::info!(migration = %name, "migration removed");
    Ok(())
}
