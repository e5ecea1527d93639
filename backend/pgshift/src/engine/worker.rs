//! Engine layer: the worker of a migration's run: applies the source's batches to the target in
//! tick order, one target transaction per batch (which also records the applied tick, fenced
//! by the batch's starting tick), retrying a batch statement by statement when grouping trips
//! a constraint the original order satisfies.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::apply::{self, ChunkContext, TablePlan};
use super::batch::{self, Op, Snapshot};
use super::ddl;
use super::error::Context;
use super::runner::refresh_tables;
use super::settings::EngineSettings;
use super::status::StatusHandle;
use super::target::{self, AppliedTick};
use super::ticker::{SourceTick, TICK_COLUMNS};
use super::{quote_ident, EngineError, EngineResult};
use crate::store::MigrationRecord;

/// Applies batches in tick order, one target transaction per batch.
pub(super) struct Worker {
    pub(super) schema: String,
    pub(super) source: PgPool,
    pub(super) target: PgConnection,
    pub(super) plans: HashMap<i32, TablePlan>,
    pub(super) applied: AppliedTick,
    pub(super) applied_tx: watch::Sender<Option<AppliedTick>>,
    pub(super) status: StatusHandle,
    pub(super) settings: EngineSettings,
    pub(super) record: MigrationRecord,
    pub(super) ticked: Arc<tokio::sync::Notify>,
}

impl Worker {
    pub(super) async fn run(mut self, cancel: CancellationToken) -> EngineResult<()> {
        let schema = quote_ident(&self.schema);
        // The newest tick that keeps the batch under the size bound (or the next one, however big):
        // a worker that fell behind catches up in fewer, larger transactions.
        let next_sql = format!(
            "SELECT {TICK_COLUMNS} FROM {schema}.tick
              WHERE tick_id > $1
                AND (tick_event_seq - $2 <= $3 OR tick_id = (SELECT min(tick_id) FROM {schema}.tick WHERE tick_id > $1))
              ORDER BY tick_id DESC LIMIT 1"
        );
        let poll = self.settings.ticker.busy_interval / 2;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let next = sqlx::query(&next_sql)
                .bind(self.applied.tick_id)
                .bind(self.applied.tick_event_seq)
                .bind(self.settings.batch_max_events)
                .fetch_optional(&self.source)
                .await
                .context(|| "looking for the next tick".into())?;
            let Some(row) = next else {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = self.ticked.notified() => continue,
                    _ = tokio::time::sleep(poll) => continue,
                }
            };
            let tick = SourceTick::from_row(&row);
            let applied = match self.apply_batch(&tick, false).await {
                Err(err) if needs_careful_retry(&err) => {
                    tracing::info!(migration = %self.record.name, error = %err, "retrying a batch one event at a time");
                    self.apply_batch(&tick, true).await?
                }
                other => other?,
            };
            self.applied = applied;
            let _ = self.applied_tx.send(Some(self.applied.clone()));
            self.status.update(|s| {
                s.applied_tick = Some(self.applied.tick_id);
                s.applied_tick_time = Some(self.applied.tick_time);
                s.events_applied = Some(self.applied.events_applied);
            });
            if !self.status.snapshot().all_synced() {
                let progress = target::table_progress(&mut self.target, &self.schema).await?;
                refresh_tables(&self.status, &progress);
            }
        }
    }

    async fn apply_batch(&mut self, tick: &SourceTick, careful: bool) -> EngineResult<AppliedTick> {
        let prev = Snapshot::parse(&self.applied.snapshot)?;
        let cur = Snapshot::parse(&tick.snapshot)?;
        let query = batch::batch_query(&self.schema, &prev, &tick.snapshot, &cur);
        let mut src = self
            .source
            .begin()
            .await
            .context(|| "opening a batch transaction on the source".into())?;
        batch::open(&mut src, &query).await?;
        let mut dst = self
            .target
            .begin()
            .await
            .context(|| "opening a batch transaction on the target".into())?;
        // Target triggers and foreign-key actions must not fire on replicated rows.
        sqlx::query("SET LOCAL session_replication_role = replica")
            .execute(&mut *dst)
            .await
            .context(|| "setting session_replication_role on the target".into())?;
        let progress = target::table_progress(&mut dst, &self.schema).await?;
        let tombstones: Vec<i32> = progress
            .iter()
            .filter(|p| p.state.needs_tombstones())
            .map(|p| p.table_no)
            .collect();
        let needs_tombstone = |no: i32| tombstones.contains(&no);
        // A schema change in the batch replaces plans; a failed attempt must not keep them.
        let plans_before = self.plans.clone();
        let applied = async {
            let mut events = 0i64;
            let mut size =
                batch::FetchSize::new(self.settings.fetch_events, apply::STATEMENT_BYTES);
            loop {
                let chunk = batch::fetch(&mut src, size.next()).await?;
                if chunk.is_empty() {
                    break;
                }
                size.observe(&chunk);
                events += chunk.len() as i64;
                // A schema change splits the chunk: what comes before it is applied with the
                // old column lists, what follows with the new ones (ddl.rs).
                for part in chunk.split_inclusive(|e| e.op == Op::SchemaChange) {
                    let (rows, change) = match part.split_last() {
                        Some((last, rows)) if last.op == Op::SchemaChange => (rows, Some(last)),
                        _ => (part, None),
                    };
                    let ctx = ChunkContext {
                        plans: &self.plans,
                        tombstone_tables: &needs_tombstone,
                        careful,
                    };
                    apply::apply_chunk(&mut dst, &ctx, rows).await?;
                    if let Some(change) = change {
                        apply::finish_batch(&mut dst, &ctx).await?;
                        ddl::apply_on_target(&mut dst, &self.schema, &change.data, &mut self.plans)
                            .await?;
                        tracing::info!(migration = %self.record.name, "applied a schema change on the target");
                    }
                }
            }
            let ctx = ChunkContext {
                plans: &self.plans,
                tombstone_tables: &needs_tombstone,
                careful,
            };
            apply::finish_batch(&mut dst, &ctx).await?;
            Ok::<_, EngineError>(events)
        }
        .await;
        let events = match applied {
            Ok(events) => events,
            Err(err) => {
                self.plans = plans_before;
                return Err(err);
            }
        };
        let applied =
            target::record_batch(&mut dst, &self.schema, self.applied.tick_id, tick, events)
                .await?;
        dst.commit()
            .await
            .context(|| "committing a batch on the target".into())?;
        src.commit()
            .await
            .context(|| "closing the batch on the source".into())?;
        Ok(applied)
    }
}

/// Grouped statements can trip a unique or exclusion constraint that the original order
/// satisfies (two rows swapping a unique value), or meet the same key twice in one statement.
fn needs_careful_retry(err: &EngineError) -> bool {
    matches!(
        err.sqlstate().as_deref(),
        Some("23505") | Some("23P01") | Some("21000")
    )
}
