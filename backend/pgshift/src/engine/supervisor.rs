//! Engine layer: the supervisor: one run per active migration (a task in its `TaskSet`), started
//! and stopped on request, resumed when the server starts, and all shut down together; it also
//! resolves a migration's clusters to connection options.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::left_freezes::LeftFreezes;
use super::runner::Run;
use super::settings::EngineSettings;
use super::status::{MigrationStatus, RuntimeState, StatusHandle};
use super::{pg, schema, source, target, EngineError, EngineResult};
use crate::base::TaskSet;
use crate::secrets::Secrets;
use crate::store::{Cluster, DesiredState, MigrationRecord, SchemaMode, Store};
use sqlx::postgres::PgConnectOptions;

/// Owns every migration's run. Lives in the application state, not in a global.
pub struct Supervisor {
    store: Arc<dyn Store>,
    secrets: Arc<Secrets>,
    settings: EngineSettings,
    /// One run per migration.
    runs: TaskSet<Uuid>,
    statuses: Mutex<HashMap<Uuid, StatusHandle>>,
    /// Freezes stopped cutovers could not lift; each run lifts its own.
    left_freezes: Arc<LeftFreezes>,
}

impl Supervisor {
    pub fn new(store: Arc<dyn Store>, secrets: Arc<Secrets>, settings: EngineSettings) -> Self {
        Self {
            store,
            secrets,
            settings,
            runs: TaskSet::new("migration run"),
            statuses: Mutex::new(HashMap::new()),
            left_freezes: Arc::new(LeftFreezes::default()),
        }
    }

    /// The freezes stopped cutovers (or a crash) left on sources, until each run lifts its own.
    pub fn left_freezes(&self) -> &LeftFreezes {
        &self.left_freezes
    }

    /// The engine's tunables (where pg_dump is; verification reads its bound on held writes here).
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The metadata store the supervisor reads clusters and migrations from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    async fn cluster(&self, id: Uuid) -> EngineResult<Cluster> {
        self.store.cluster_by_id(id).await?.ok_or_else(|| {
            EngineError::invalid(
                "cluster_missing",
                "a cluster of this migration no longer exists",
            )
        })
    }

    /// The decrypted DSN of the cluster.
    async fn dsn(&self, cluster_id: Uuid) -> EngineResult<String> {
        let cluster = self.cluster(cluster_id).await?;
        self.secrets.decrypt(&cluster.dsn).map_err(|e| {
            EngineError::invalid(
                "secret_unreadable",
                format!("cannot decrypt the DSN of cluster {:?}: {e}", cluster.name),
            )
        })
    }

    /// Connection options for `database` on the cluster, from its decrypted DSN.
    async fn options(&self, cluster_id: Uuid, database: &str) -> EngineResult<PgConnectOptions> {
        pg::options(&self.dsn(cluster_id).await?, Some(database))
    }

    /// Connection options for the migration's source and target (the cutover and verification
    /// connect to both sides themselves).
    pub async fn endpoints(
        &self,
        record: &MigrationRecord,
    ) -> EngineResult<(PgConnectOptions, PgConnectOptions)> {
        let source = self
            .options(record.source.cluster_id, &record.source.database)
            .await?;
        let target = self
            .options(record.target.cluster_id, &record.target.database)
            .await?;
        Ok((source, target))
    }

    /// Where pg_dump and pg_restore would reach the migration's source and target (libpq URIs
    /// without their passwords).
    pub async fn dump_sources(
        &self,
        record: &MigrationRecord,
    ) -> EngineResult<(schema::DumpSource, schema::DumpSource)> {
        let source = schema::DumpSource::from_dsn(
            &self.dsn(record.source.cluster_id).await?,
            &record.source.database,
        )?;
        let target = schema::DumpSource::from_dsn(
            &self.dsn(record.target.cluster_id).await?,
            &record.target.database,
        )?;
        Ok((source, target))
    }

    /// Starts the migration's run unless it is already running.
    pub async fn start(&self, record: &MigrationRecord) -> EngineResult<()> {
        let source = self
            .options(record.source.cluster_id, &record.source.database)
            .await?;
        let target = self
            .options(record.target.cluster_id, &record.target.database)
            .await?;
        let dump_source = match record.schema_mode {
            SchemaMode::Create => Some(schema::DumpSource::from_dsn(
                &self.dsn(record.source.cluster_id).await?,
                &record.source.database,
            )?),
            SchemaMode::Existing => None,
        };
        let Ok(cancel) = self.runs.reserve(record.id, ()) else {
            return Ok(());
        };
        let status = StatusHandle::new(&record.tables);
        self.statuses
            .lock()
            .expect("statuses lock")
            .insert(record.id, status.clone());
        let run = Run {
            record: record.clone(),
            source,
            target,
            settings: self.settings.clone(),
            status,
            store: self.store.clone(),
            left_freezes: self.left_freezes.clone(),
            dump_source,
        };
        let name = record.name.clone();
        self.runs.start(&record.id, async move {
            tracing::info!(migration = %name, "migration running");
            run.run(cancel).await;
            tracing::info!(migration = %name, "migration stopped");
        });
        Ok(())
    }

    /// Stops the migration's run and waits for it to finish its current step. Its live figures
    /// go with it: a stopped migration's status is read from the databases.
    pub async fn stop(&self, id: Uuid) {
        self.statuses.lock().expect("statuses lock").remove(&id);
        self.runs.stop(&id).await;
    }

    /// Live status of a migration this process has run since it started.
    pub fn status(&self, id: Uuid) -> Option<MigrationStatus> {
        self.statuses
            .lock()
            .expect("statuses lock")
            .get(&id)
            .map(|s| s.snapshot())
    }

    /// Status of a migration that is not running here: table states and the applied tick from
    /// the target's bookkeeping, waiting events and lag from the source's queue.
    pub async fn inspect(&self, record: &MigrationRecord) -> EngineResult<MigrationStatus> {
        let mut status = MigrationStatus::new(&record.tables);
        status.runtime = RuntimeState::Stopped;
        let options = self
            .options(record.target.cluster_id, &record.target.database)
            .await?;
        let mut conn = pg::connect("the target", &options).await?;
        let schema = record.schema_name();
        if target::is_installed(&mut conn, &schema).await? {
            let applied = target::applied_tick(&mut conn, &schema).await?;
            status.applied_tick = Some(applied.tick_id);
            status.applied_tick_time = Some(applied.tick_time);
            status.events_applied = Some(applied.events_applied);
            for p in target::table_progress(&mut conn, &schema).await? {
                if let Some(t) = status.tables.iter_mut().find(|t| t.table_no == p.table_no) {
                    t.state = p.state.as_str().into();
                    t.rows_copied = p.rows_copied;
                    t.rows_estimated = p.rows_estimated;
                }
            }
            let table_nos: Vec<i32> = record.tables.iter().map(|t| t.no).collect();
            let objects = schema::outstanding(&mut conn, &schema, &table_nos).await?;
            for t in &mut status.tables {
                let (pending, failed) = objects.get(&t.table_no).cloned().unwrap_or_default();
                t.objects_pending = pending;
                t.objects_failed = failed;
            }
            let options = self
                .options(record.source.cluster_id, &record.source.database)
                .await?;
            let mut src = pg::connect("the source", &options).await?;
            if source::is_installed(&mut src, &schema).await? {
                let (seq, now): (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(&format!(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END, clock_timestamp() FROM {}.event_id_seq",
                    super::quote_ident(&schema)
                ))
                .fetch_one(&mut src)
                .await
                .map_err(|source| EngineError::Database { context: "reading the event counter".into(), source })?;
                let pending = (seq - applied.tick_event_seq).max(0);
                status.pending_events = Some(pending);
                status.lag_seconds = Some(if pending > 0 {
                    (now - applied.tick_time).num_milliseconds().max(0) as f64 / 1000.0
                } else {
                    0.0
                });
            }
        }
        Ok(status)
    }

    /// Stops the run and removes everything the migration installed on the source and target.
    pub async fn remove(&self, record: &MigrationRecord) -> EngineResult<()> {
        self.stop(record.id).await;
        let schema = record.schema_name();
        let source = self
            .options(record.source.cluster_id, &record.source.database)
            .await?;
        let mut src = pg::connect("the source", &source).await?;
        source::uninstall(&mut src, &schema, Some(&self.runs.stopping())).await?;
        let target = self
            .options(record.target.cluster_id, &record.target.database)
            .await?;
        let mut dst = pg::connect("the target", &target).await?;
        target::uninstall(&mut dst, &schema).await?;
        self.statuses
            .lock()
            .expect("statuses lock")
            .remove(&record.id);
        Ok(())
    }

    /// Brings the installed capture and bookkeeping of a migration whose run is stopped in line
    /// with its record's tables (tables added or removed; see table_set.rs). Nothing to do for a
    /// migration that was never started: its run installs everything.
    pub async fn reconcile_tables(
        &self,
        record: &MigrationRecord,
    ) -> EngineResult<super::table_set::Changes> {
        let (source, target) = self.endpoints(record).await?;
        let mut src = pg::connect("the source", &source).await?;
        let mut dst = pg::connect("the target", &target).await?;
        let schema = record.schema_name();
        if !source::is_installed(&mut src, &schema).await?
            || !target::is_installed(&mut dst, &schema).await?
        {
            return Ok(Default::default());
        }
        let dump = match record.schema_mode {
            SchemaMode::Create => Some(schema::DumpSource::from_dsn(
                &self.dsn(record.source.cluster_id).await?,
                &record.source.database,
            )?),
            SchemaMode::Existing => None,
        };
        let build = dump.as_ref().map(|dump| super::table_set::Build {
            target: &target,
            pg_bin_dir: self.settings.pg_bin_dir.as_deref(),
            dump,
        });
        super::table_set::reconcile(&mut src, &mut dst, record, build).await
    }

    /// Starts every migration the store says should be running (at server start).
    pub async fn resume_all(&self) -> EngineResult<()> {
        let records = self.store.list_migrations().await?;
        for record in records
            .iter()
            .filter(|r| r.desired_state == DesiredState::Running)
        {
            if let Err(err) = self.start(record).await {
                tracing::error!(migration = %record.name, error = %err, "cannot resume migration");
            }
        }
        Ok(())
    }

    /// Cancels every run and waits up to `timeout`, naming the runs that did not stop.
    pub async fn shutdown(&self, timeout: Duration) {
        self.runs.shutdown(timeout).await;
    }
}
