//! Engine layer: one migration's run: install what is missing, then drive the ticker, the worker
//! and the copy until cancelled; on failure, report it and try again with back-off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::apply::{self, TablePlan};
use super::copy::TableCopy;
use super::error::Context;
use super::left_freezes::LeftFreezes;
use super::settings::EngineSettings;
use super::status::{RuntimeState, StatusHandle};
use super::target::{self, TableProgress, TableState};
use super::ticker::{self, Ticker};
use super::worker::Worker;
use super::{catalog, pg, row_format, schema, source, EngineError, EngineResult};
use crate::store::{DesiredState, MigrationRecord, Store};

/// Everything a migration's run needs.
pub struct Run {
    pub record: MigrationRecord,
    pub source: PgConnectOptions,
    pub target: PgConnectOptions,
    pub settings: EngineSettings,
    pub status: StatusHandle,
    pub store: Arc<dyn Store>,
    pub left_freezes: Arc<LeftFreezes>,
    /// Where pg_dump reads the source's schema, for a migration that builds the target's
    /// (schema `create`); None otherwise.
    pub dump_source: Option<schema::DumpSource>,
}

/// Keeps the session holding the migration's run lock until cancelled, checking every second
/// that it is alive (which also keeps an `idle_session_timeout` from ending it).
async fn hold_run_lock(mut conn: PgConnection, cancel: CancellationToken) -> EngineResult<()> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = conn.close().await;
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let alive = tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::query("SELECT 1").execute(&mut conn),
        )
        .await;
        if !matches!(alive, Ok(Ok(_))) {
            return Err(EngineError::invalid(
                "run_lock_lost",
                "the session holding this migration's lock on the source ended; the run starts again so that no other process runs beside it",
            ));
        }
    }
}

/// How long the tasks of an attempt that ends get to finish their step before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Run {
    /// Runs until cancelled, retrying failed attempts with back-off.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let started = std::time::Instant::now();
            // Boxed as Send here so the compiler checks the attempt with concrete lifetimes.
            let attempt: std::pin::Pin<
                Box<dyn std::future::Future<Output = EngineResult<()>> + Send + '_>,
            > = Box::pin(self.attempt(&cancel));
            match attempt.await {
                Ok(()) | Err(EngineError::Cancelled) => break,
                Err(err) => {
                    // The status and the record show what callers may read; the log, everything.
                    let message = self.left_freezes.describe(self.record.id, err.shown());
                    tracing::warn!(migration = %self.record.name, error = %err, "migration attempt failed; retrying");
                    self.status.failed(&message, err.table_no());
                    if let Err(e) = self
                        .store
                        .set_last_error(self.record.id, Some(&message))
                        .await
                    {
                        tracing::error!(error = %e, "cannot record a migration error");
                    }
                    // An attempt that ran for a while was healthy: start the back-off over.
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_secs(1);
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
            }
        }
        self.status.update(|s| s.runtime = RuntimeState::Stopped);
    }

    /// A freeze on the source while no cutover runs was left by one that stopped (or by a crash):
    /// writes stay blocked until it is lifted, so lifting it comes before anything else, and
    /// needs the source only.
    async fn lift_left_freeze(&self, src: &mut PgConnection, schema: &str) -> EngineResult<()> {
        match super::cutover::freeze::lift_left(src, schema).await {
            Ok(Some(lifted)) => {
                if lifted {
                    tracing::warn!(migration = %self.record.name, "lifted a freeze a stopped cutover left on the source");
                }
                self.left_freezes.clear(self.record.id);
                Ok(())
            }
            // A cutover runs and holds it.
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::warn!(migration = %self.record.name, error = %e, "cannot lift the freeze left on the source");
                self.left_freezes.note(self.record.id, &e.shown());
                Err(EngineError::invalid(
                    "source_frozen",
                    LeftFreezes::lift_failed(&e.shown()),
                ))
            }
        }
    }

    async fn attempt(&self, cancel: &CancellationToken) -> EngineResult<()> {
        self.status.update(|s| s.runtime = RuntimeState::Starting);
        let schema = self.record.schema_name();
        let mut src = pg::connect("the source", &self.source).await?;
        // One run per migration, across every pgshift process that can reach this source: the
        // lock lives as long as this connection, which the attempt keeps open.
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(format!("pgshift run {schema}"))
            .fetch_one(&mut src)
            .await
            .context(|| "taking the migration's lock on the source".into())?;
        if !locked {
            return Err(EngineError::invalid(
                "already_running",
                "another pgshift process is running this migration against the same source; stop it first",
            ));
        }
        // Holding the run lock, look again at what the record and the source say: another
        // process may have paused or cut the migration over meanwhile, and a finished cutover's
        // permanent freeze is its decision even if a crash kept it from being recorded.
        let current = self
            .store
            .migration_by_name(&self.record.name)
            .await?
            .filter(|r| r.id == self.record.id);
        if current.map(|r| r.desired_state) != Some(DesiredState::Running) {
            tracing::info!(migration = %self.record.name, "the migration is no longer running in the store; its run stops");
            return Ok(());
        }
        if super::cutover::freeze::is_permanent(&mut src, &schema).await? {
            tracing::warn!(migration = %self.record.name, "a cutover finished on the source (its freeze is permanent): recording it and stopping the run");
            self.store
                .set_desired_state(self.record.id, DesiredState::CutOver)
                .await?;
            return Ok(());
        }
        self.lift_left_freeze(&mut src, &schema).await?;
        let mut dst = pg::connect("the target", &self.target).await?;
        // Every write on the target runs with it; without it (a grant revoked since the
        // migration was created) the target's own triggers would fire on replicated rows.
        catalog::check_replication_role(&mut dst).await?;
        if !source::is_installed(&mut src, &schema).await? {
            if target::is_installed(&mut dst, &schema).await? {
                return Err(EngineError::invalid(
                    "capture_missing",
                    "pgshift's capture schema is missing on the source although the target is set up; remove the migration and create it again",
                ));
            }
            source::install(&mut src, &self.record).await?;
            tracing::info!(migration = %self.record.name, "installed change capture on the source");
        }
        let pg_bin_dir = self.settings.pg_bin_dir.as_deref();
        let mut plan = None;
        if !target::is_installed(&mut dst, &schema).await? {
            if let Some(dump) = &self.dump_source {
                // Schema "create": the tables with their keys exist before the copy starts.
                plan = schema::prepare(
                    &mut src,
                    &mut dst,
                    &self.target,
                    pg_bin_dir,
                    dump,
                    &self.record.tables,
                )
                .await?;
            }
            let first = ticker::first_tick(&mut src, &schema).await?;
            target::install(&mut dst, &self.record, &first).await?;
            tracing::info!(migration = %self.record.name, "prepared the target");
        }
        // Tables added to or removed from the migration since its capture was installed (or
        // a change to its table set that a crash interrupted).
        let build = self
            .dump_source
            .as_ref()
            .map(|dump| super::table_set::Build {
                target: &self.target,
                pg_bin_dir,
                dump,
            });
        super::table_set::reconcile(&mut src, &mut dst, &self.record, build).await?;
        if let Some(dump) = &self.dump_source {
            schema::record_after(
                &mut src,
                &mut dst,
                &schema,
                plan,
                pg_bin_dir,
                dump,
                &self.record.tables,
            )
            .await?;
        }
        source::check_format(&mut src, &schema).await?;
        // The column lists the worker reads rows with: the target's, as of the last schema change
        // it applied (see ddl.rs).
        let layout = super::ddl::layout(&mut dst, &schema, &self.record.tables).await?;
        row_format::prepare_target(&mut dst, &schema, &layout).await?;
        let applied = target::applied_tick(&mut dst, &schema).await?;
        let progress = target::table_progress(&mut dst, &schema).await?;
        self.refresh_tables(&progress);
        let facts = target_facts(&mut dst, &layout).await?;

        let source_pool = pg::pool("the source", &self.source, 3).await?;
        let (applied_tx, applied_rx) = watch::channel(Some(applied.clone()));
        let tasks = cancel.child_token();
        let mut set: JoinSet<(&'static str, EngineResult<()>)> = JoinSet::new();

        let tick_now = Arc::new(tokio::sync::Notify::new());
        let ticked = Arc::new(tokio::sync::Notify::new());
        let ticker = Ticker {
            pool: source_pool.clone(),
            schema: schema.clone(),
            settings: self.settings.ticker.clone(),
            applied: applied_rx,
            status: self.status.clone(),
            tick_now: tick_now.clone(),
            ticked: ticked.clone(),
        };
        let t = tasks.clone();
        set.spawn(async move { ("ticker", ticker.run(t).await) });

        let watch = SourceWatch {
            source: source_pool.clone(),
            record: self.record.clone(),
            every: self.settings.ticker.idle_interval,
        };
        let t = tasks.clone();
        set.spawn(async move { ("source watch", watch.run(t).await) });

        let plans: HashMap<i32, TablePlan> = layout
            .iter()
            .map(|t| (t.no, TablePlan::new(&schema, t, &facts[&t.no])))
            .collect();
        // A table without a key replays the events held while it copied (apply/keyless.rs).
        let copy_plans: HashMap<i32, TablePlan> = plans
            .iter()
            .filter(|(_, p)| p.is_keyless())
            .map(|(no, p)| (*no, p.clone()))
            .collect();
        let worker = Worker {
            schema: schema.clone(),
            source: source_pool.clone(),
            target: dst,
            plans,
            applied,
            applied_tx,
            status: self.status.clone(),
            settings: self.settings.clone(),
            record: self.record.clone(),
            ticked,
        };
        let t = tasks.clone();
        set.spawn(async move { ("worker", worker.run(t).await) });

        // The session holding the run lock: if it dies (a server restart, an idle-session
        // timeout), another process may take the lock, so this attempt ends at once.
        let t = tasks.clone();
        set.spawn(async move { ("run lock", hold_run_lock(src, t).await) });

        // A cutover that stops and cannot lift its freeze says so here: this attempt then ends,
        // and the next one lifts the freeze before anything else.
        let left = self.left_freezes.clone();
        let (id, t) = (self.record.id, tasks.clone());
        set.spawn(async move { ("freeze watch", left.watch(id, t).await) });

        if self.dump_source.is_some() {
            // The rest of the schema, each object once the tables it needs are copied.
            let builder = schema::Builder {
                target: self.target.clone(),
                schema: schema.clone(),
                status: self.status.clone(),
                table_nos: self.record.tables.iter().map(|t| t.no).collect(),
                every: self.settings.ticker.idle_interval,
            };
            let t = tasks.clone();
            set.spawn(async move { ("schema builder", builder.run(t).await) });
        }

        let copies = self.copies(&schema, &progress, &tick_now, &copy_plans);
        if !copies.is_empty() {
            let t = tasks.clone();
            let parallel = self.settings.copy_parallelism;
            set.spawn(async move { ("copy", run_copies(copies, parallel, t).await) });
        }
        self.status.running();
        let _ = self.store.set_last_error(self.record.id, None).await;

        // The first task to fail ends the attempt; the others are cancelled and awaited, for a
        // while: a task stuck in a statement (behind a lock on the target, say) does not see
        // the cancellation, and is aborted after STOP_GRACE. Dropping it drops its connection,
        // which rolls its transaction back: an unfinished batch is applied again next time.
        let mut outcome = Ok(());
        let mut stopping_since: Option<tokio::time::Instant> = None;
        loop {
            if stopping_since.is_none() && tasks.is_cancelled() {
                stopping_since = Some(tokio::time::Instant::now());
            }
            let joined = match stopping_since {
                None => tokio::select! {
                    j = set.join_next() => j,
                    _ = tasks.cancelled() => continue,
                },
                Some(since) => {
                    match tokio::time::timeout_at(since + STOP_GRACE, set.join_next()).await {
                        Ok(j) => j,
                        Err(_) => {
                            tracing::warn!(migration = %self.record.name, "tasks did not stop within {} s; aborting them", STOP_GRACE.as_secs());
                            set.abort_all();
                            while set.join_next().await.is_some() {}
                            break;
                        }
                    }
                }
            };
            let Some(joined) = joined else { break };
            let (name, result) = match joined {
                Ok(r) => r,
                Err(e) if e.is_cancelled() => continue,
                Err(e) => (
                    "task",
                    Err(EngineError::invalid(
                        "task_panicked",
                        format!("a task panicked: {e}"),
                    )),
                ),
            };
            match result {
                Ok(()) | Err(EngineError::Cancelled) => {}
                Err(err) => {
                    tracing::debug!(task = name, error = %err, "migration task failed");
                    if outcome.is_ok() {
                        outcome = Err(err);
                    }
                    tasks.cancel();
                }
            }
        }
        source_pool.close().await;
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        outcome
    }

    fn copies(
        &self,
        schema: &str,
        progress: &[TableProgress],
        tick_now: &Arc<tokio::sync::Notify>,
        plans: &HashMap<i32, TablePlan>,
    ) -> Vec<Arc<TableCopy>> {
        let mut todo: Vec<(&TableProgress, Arc<TableCopy>)> = self
            .record
            .tables
            .iter()
            .filter_map(|t| {
                let p = progress.iter().find(|p| p.table_no == t.no)?;
                matches!(p.state, TableState::Pending | TableState::Copying).then(|| {
                    (
                        p,
                        Arc::new(TableCopy {
                            schema: schema.to_string(),
                            table: t.clone(),
                            source: self.source.clone(),
                            target: self.target.clone(),
                            chunk_rows: self.settings.copy_chunk_rows,
                            status: self.status.clone(),
                            tick_now: tick_now.clone(),
                            keyless: plans.get(&t.no).cloned(),
                        }),
                    )
                })
            })
            .collect();
        // Largest first, so the long pole starts early.
        todo.sort_by_key(|(p, _)| std::cmp::Reverse(p.rows_estimated.unwrap_or(0)));
        todo.into_iter().map(|(_, c)| c).collect()
    }

    fn refresh_tables(&self, progress: &[TableProgress]) {
        refresh_tables(&self.status, progress);
    }
}

pub(super) fn refresh_tables(status: &StatusHandle, progress: &[TableProgress]) {
    status.update(|s| {
        for p in progress {
            if let Some(t) = s.tables.iter_mut().find(|t| t.table_no == p.table_no) {
                t.state = p.state.as_str().into();
                t.rows_copied = p.rows_copied;
                t.rows_estimated = p.rows_estimated;
                t.error = None;
            }
        }
    });
}

async fn run_copies(
    copies: Vec<Arc<TableCopy>>,
    parallel: usize,
    cancel: CancellationToken,
) -> EngineResult<()> {
    let limit = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    for copy in copies {
        let limit = limit.clone();
        let cancel = cancel.clone();
        set.spawn(async move {
            let _permit = tokio::select! {
                p = limit.acquire_owned() => p.expect("semaphore open"),
                _ = cancel.cancelled() => return Err(EngineError::Cancelled),
            };
            let no = copy.table.no;
            copy.run(cancel).await.map_err(|e| e.on_table(no))
        });
    }
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(EngineError::invalid(
                    "task_panicked",
                    format!("a copy task panicked: {e}"),
                ))
            }
        }
    }
    Ok(())
}

/// What the target's catalog says about each migrated table that shapes how it is written.
async fn target_facts(
    dst: &mut PgConnection,
    tables: &[crate::store::TableSpec],
) -> EngineResult<HashMap<i32, apply::TargetFacts>> {
    let mut out = HashMap::new();
    for t in tables {
        out.insert(t.no, table_facts(dst, t).await?);
    }
    Ok(out)
}

/// What the target's catalog says about one migrated table that shapes how it is written.
pub(super) async fn table_facts(
    dst: &mut PgConnection,
    t: &crate::store::TableSpec,
) -> EngineResult<apply::TargetFacts> {
    let (referenced_by_others, deferrable_key): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' AND confrelid = $1::regclass AND conrelid <> confrelid),
                EXISTS (SELECT 1 FROM pg_constraint WHERE contype IN ('p', 'u') AND conrelid = $1::regclass AND condeferrable)",
    )
    .bind(t.sql_name())
    .fetch_one(&mut *dst)
    .await
    .context(|| format!("reading the constraints of {} on the target", t.display_name()))?;
    let key_ops = super::key_ops::key_operators(&mut *dst, t).await?;
    let keyless_match = if t.key.is_empty() {
        keyless_match_columns(&mut *dst, t).await?
    } else {
        Vec::new()
    };
    Ok(apply::TargetFacts {
        referenced_by_others,
        deferrable_key,
        key_ops,
        keyless_match,
    })
}

/// The written columns of a table without a key that are NOT NULL on the target and whose type
/// has a default btree equality there: compared with `=` besides the rows' text when applying,
/// so an index on them can find the rows (apply/keyless.rs).
async fn keyless_match_columns(
    dst: &mut PgConnection,
    table: &crate::store::TableSpec,
) -> EngineResult<Vec<String>> {
    let written: Vec<String> = table.writable_columns().map(|c| c.name.clone()).collect();
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_attribute a
          WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
            AND a.attnotnull AND a.attname = ANY($2)
            AND EXISTS (SELECT 1 FROM pg_opclass o JOIN pg_am m ON m.oid = o.opcmethod
                         WHERE m.amname = 'btree' AND o.opcdefault
                           -- Found by pgshift's sessions (search_path = pg_catalog, pg_temp).
                           AND o.opcnamespace = 'pg_catalog'::regnamespace
                           AND o.opcintype = (SELECT CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
                                                FROM pg_type ty WHERE ty.oid = a.atttypid))
          ORDER BY a.attnum",
    )
    .bind(table.sql_name())
    .bind(&written)
    .fetch_all(&mut *dst)
    .await
    .context(|| format!("reading the columns of {} on the target", table.display_name()))
}

/// Watches the source's tables every `every` (the ticker's idle interval): a column change ends
/// the attempt with the table and column named (nothing is applied with the old column list),
/// and partitions that joined or left a table are followed (see partitions.rs; pg_partman adds
/// one a day).
struct SourceWatch {
    source: PgPool,
    record: MigrationRecord,
    every: Duration,
}

impl SourceWatch {
    async fn run(self, cancel: CancellationToken) -> EngineResult<()> {
        loop {
            let mut conn = self
                .source
                .acquire()
                .await
                .context(|| "connecting to the source".into())?;
            let looked = async {
                source::check_columns(&mut conn, &self.record).await?;
                super::partitions::follow(&mut conn, &self.record).await
            }
            .await;
            match looked {
                Ok(changes) => {
                    for change in changes {
                        tracing::info!(migration = %self.record.name, "{change}");
                    }
                }
                // The application's DDL (a partition attached or dropped) can deadlock with the
                // watch's catalog reads or its hold on the table: look again next time rather
                // than fail the migration.
                Err(err)
                    if matches!(err.sqlstate().as_deref(), Some("40P01" | "55P03" | "40001")) =>
                {
                    tracing::debug!(migration = %self.record.name, error = %err, "source watch: busy, looking again later");
                }
                Err(err) => return Err(err),
            }
            drop(conn);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }
}
