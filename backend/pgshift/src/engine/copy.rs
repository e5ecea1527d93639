//! Engine layer: the initial copy, in primary-key chunks. Each chunk is one short read on the
//! source and one target transaction that also records the copy's position, so a crash resumes
//! at the last committed chunk and no source transaction stays open for hours.
//!
//! Copy and apply run at once. The worker applies every event of every table (upsert or
//! delete by key, whole rows, leaving tombstones for keys deleted while the table copies). A
//! chunk is merged only after the worker has applied every transaction the chunk's snapshot
//! saw, and the merge inserts only rows the worker has not touched (absent, not tombstoned).
//! Such a row has not changed since capture began, so it is exactly the source's row at the
//! worker's position: the target is always a consistent subset of one source state (unique
//! constraints hold), and every later change reaches it through the worker.

mod whole;
mod wide_rows;

use std::sync::Arc;

use futures_util::TryStreamExt;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::batch::Snapshot;
use super::error::Context;
use super::status::StatusHandle;
use super::target::{self, TableState};
use super::{key_ops, pg, quote_ident, row_format, EngineError, EngineResult};
use crate::store::TableSpec;

/// Everything one table's copy needs.
pub struct TableCopy {
    pub schema: String,
    pub table: TableSpec,
    pub source: PgConnectOptions,
    pub target: PgConnectOptions,
    pub chunk_rows: i64,
    pub status: StatusHandle,
    /// Wakes the ticker, so the worker passes a chunk's snapshot without waiting for an idle tick.
    pub tick_now: Arc<tokio::sync::Notify>,
    /// A table without a key: how its held events are applied when its copy lands ([`whole`]).
    pub keyless: Option<super::apply::TablePlan>,
}

impl TableCopy {
    /// Copies the table from its recorded position to the end, then marks it catching up.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> EngineResult<()> {
        let mut src = pg::connect("the source", &self.source).await?;
        let mut dst = pg::connect("the target", &self.target).await?;
        sqlx::query("SET session_replication_role = replica")
            .execute(&mut dst)
            .await
            .context(|| "setting session_replication_role on the target".into())?;
        let t = &self.table;
        let writable: Vec<String> = t.writable_columns().map(|c| quote_ident(&c.name)).collect();
        let cols = writable.join(", ");
        let keys: Vec<String> = t.key.iter().map(|k| quote_ident(k)).collect();
        // The key's own operators on each server (see key_ops): the chunk's range is read on the
        // source and looked up on the target.
        let src_ops = key_ops::key_operators(&mut src, t).await?;
        let dst_ops = key_ops::key_operators(&mut dst, t).await?;
        let temp = format!("pgshift_copy_{}", t.no);
        // ONLY: an inheritance parent's copy must not read (or count) its children's rows.
        let from = t.relation_only();
        sqlx::query(&format!(
            // INCLUDING GENERATED: the copy never writes generated columns, so a NOT NULL one
            // must be computed here as in the table.
            "CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {} INCLUDING GENERATED)",
            t.sql_name()
        ))
        .execute(&mut dst)
        .await
        .context(|| format!("preparing the copy of {}", t.display_name()))?;

        loop {
            let progress = self.progress(&mut dst).await?;
            if matches!(progress.state, TableState::CatchingUp | TableState::Synced) {
                return Ok(());
            }
            if progress.state == TableState::Pending {
                let estimate = self.estimate(&mut src).await?;
                sqlx::query(&format!(
                    "UPDATE {}.table_state
                        SET state = 'copying', rows_estimated = $2, copy_started_at = coalesce(copy_started_at, now())
                      WHERE table_no = $1",
                    quote_ident(&self.schema)
                ))
                .bind(t.no)
                .bind(estimate)
                .execute(&mut dst)
                .await
                .context(|| "recording the copy start".into())?;
                self.status.table_copy(
                    t.no,
                    TableState::Copying,
                    progress.rows_copied,
                    Some(estimate),
                );
            }
            let epoch = progress.copy_epoch;
            if self.keyless.is_some() {
                let position = progress.copy_position.clone();
                return self
                    .copy_whole(&mut src, &mut dst, epoch, position, &cancel)
                    .await;
            }
            let position = progress.copy_position.as_deref();
            let range = |ops: &[key_ops::ColumnOps], upper: Option<&[String]>| {
                let mut conds: Vec<String> = position
                    .map(|p| key_ops::key_after(ops, &keys, p))
                    .into_iter()
                    .collect();
                if let Some(u) = upper {
                    conds.push(key_ops::key_up_to(ops, &keys, u));
                }
                if conds.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {}", conds.join(" AND "))
                }
            };
            let where_after = range(&src_ops, None);
            // The chunk's upper key, as literals the server quoted itself.
            let bound_sql = format!(
                "SELECT ARRAY[{}] FROM {from} {where_after} ORDER BY {} OFFSET {} LIMIT 1",
                keys.iter()
                    .map(|k| format!("quote_literal({k}::text) || '::' || pg_typeof({k})::text"))
                    .collect::<Vec<_>>()
                    .join(", "),
                keys.join(", "),
                self.chunk_rows - 1
            );
            let upper: Option<Vec<String>> = sqlx::query_scalar(&bound_sql)
                .fetch_optional(&mut src)
                .await
                .context(|| format!("finding the next chunk of {}", t.display_name()))?;
            let where_chunk = range(&src_ops, upper.as_deref());
            let where_chunk_target = range(&dst_ops, upper.as_deref());
            let copy_out = format!("COPY (SELECT {cols} FROM {from} {where_chunk}) TO STDOUT");

            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let chunk = Chunk {
                copy_out: &copy_out,
                source_range: &where_chunk,
                source_ops: &src_ops,
                from: &from,
                where_chunk: &where_chunk_target,
                temp: &temp,
                cols: &cols,
                epoch,
                upper: upper.as_deref(),
            };
            let copied = self.copy_chunk(&mut src, &mut dst, &chunk, &cancel).await?;
            match copied {
                None => continue, // a truncate restarted the copy: read the new position
                Some(rows) => {
                    let p = self.progress(&mut dst).await?;
                    self.status.table_copy(
                        t.no,
                        TableState::Copying,
                        p.rows_copied,
                        p.rows_estimated,
                    );
                    tracing::debug!(table = %t.display_name(), rows, "copied a chunk");
                }
            }
            if upper.is_none() {
                if !self.finish(&mut src, &mut dst, epoch).await? {
                    continue; // truncated after the last chunk: copy again from the start
                }
                let p = self.progress(&mut dst).await?;
                self.status
                    .table_copy(t.no, p.state, p.rows_copied, p.rows_estimated);
                return Ok(());
            }
        }
    }

    /// Waits until the worker has applied every transaction `snapshot` saw (waking the ticker
    /// so that it does not wait for an idle tick).
    async fn wait_for_worker(
        &self,
        dst: &mut PgConnection,
        snapshot: &Snapshot,
        cancel: &CancellationToken,
    ) -> EngineResult<()> {
        self.tick_now.notify_one();
        let applied_sql = format!(
            "SELECT tick_snapshot FROM {}.applied",
            quote_ident(&self.schema)
        );
        loop {
            let applied: String = sqlx::query_scalar(&applied_sql)
                .fetch_one(&mut *dst)
                .await
                .context(|| "reading the applied tick".into())?;
            if Snapshot::parse(&applied)?.includes(snapshot) {
                return Ok(());
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(EngineError::Cancelled),
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
        }
    }

    async fn progress(&self, dst: &mut PgConnection) -> EngineResult<target::TableProgress> {
        let all = target::table_progress(dst, &self.schema).await?;
        all.into_iter()
            .find(|p| p.table_no == self.table.no)
            .ok_or_else(|| {
                EngineError::invalid(
                    "state_missing",
                    format!(
                        "no copy state for {} on the target",
                        self.table.display_name()
                    ),
                )
            })
    }

    async fn estimate(&self, src: &mut PgConnection) -> EngineResult<i64> {
        let reltuples: f64 = sqlx::query_scalar(
            "SELECT coalesce(sum(c.reltuples) FILTER (WHERE c.reltuples >= 0), -1)::float8
               FROM pg_partition_tree($1::regclass) p JOIN pg_class c ON c.oid = p.relid WHERE p.isleaf",
        )
        .bind(self.table.sql_name())
        .fetch_one(&mut *src)
        .await
        .context(|| "estimating the table size".into())?;
        if reltuples >= 0.0 {
            return Ok(reltuples as i64);
        }
        // Never analysed: count, which is exact and fine for the small tables this happens to.
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}",
            self.table.relation_only()
        ))
        .fetch_one(&mut *src)
        .await
        .context(|| "counting rows".into())
    }

    /// Copies one chunk and records the position in the same target transaction. Returns the
    /// rows added, or None when a truncate restarted the copy meanwhile.
    async fn copy_chunk(
        &self,
        src: &mut PgConnection,
        dst: &mut PgConnection,
        chunk: &Chunk<'_>,
        cancel: &CancellationToken,
    ) -> EngineResult<Option<u64>> {
        let t = &self.table;
        let schema = quote_ident(&self.schema);
        // The chunk is read in one REPEATABLE READ transaction so that its snapshot is known.
        let (mut source_tx, snapshot) = read_snapshot(src).await?;
        let snapshot = Snapshot::parse(&snapshot)?;

        // Merge only once the worker has applied every transaction the chunk's snapshot saw.
        // Then each row the merge adds is untouched since capture began, so it is the row as of
        // the worker's position: the target stays a consistent subset of one source state, and
        // no unique constraint can trip over a row copied from "the future".
        self.wait_for_worker(dst, &snapshot, cancel).await?;

        let mut tx = dst
            .begin()
            .await
            .context(|| "opening a copy transaction on the target".into())?;
        // The lock conflicts with the worker's writes: what follows sees every change the worker
        // committed, and the worker's next change to this table waits for this chunk.
        sqlx::query(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
            t.sql_name()
        ))
        .execute(&mut *tx)
        .await
        .context(|| format!("locking {} on the target", t.display_name()))?;
        let epoch: i32 = sqlx::query_scalar(&format!(
            "SELECT copy_epoch FROM {schema}.table_state WHERE table_no = $1 FOR UPDATE"
        ))
        .bind(t.no)
        .fetch_one(&mut *tx)
        .await
        .context(|| "reading the copy epoch".into())?;
        if epoch != chunk.epoch {
            tx.rollback()
                .await
                .context(|| "discarding a stale chunk".into())?;
            return Ok(None);
        }
        // When the worker has written nothing in this key range and deleted nothing in this
        // table, every row of the chunk goes in as it is: straight into the table.
        let touched: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {table} {range}) OR EXISTS (SELECT 1 FROM {tombstones})",
            table = t.relation_only(),
            range = chunk.where_chunk,
            tombstones = row_format::tombstone_table(&self.schema, t),
        ))
        .fetch_one(&mut *tx)
        .await
        .context(|| format!("looking at {} on the target", t.display_name()))?;
        let into = if touched {
            chunk.temp.to_string()
        } else {
            t.sql_name()
        };
        let streamed = self
            .stream_chunk(&mut source_tx, &mut tx, chunk, &into, !touched)
            .await?;
        // Which partitions the rows came from, while the chunk's locks keep them attached.
        let partitions = if t.partitioned {
            super::partitions::listed(&mut source_tx, t).await?
        } else {
            Vec::new()
        };
        source_tx
            .commit()
            .await
            .context(|| "closing the copy transaction on the source".into())?;
        super::partitions::note_seen(src, &self.schema, t, &partitions).await?;
        let added = if touched {
            self.merge(&mut tx, chunk).await?
        } else {
            streamed
        };
        sqlx::query(&format!(
            "UPDATE {schema}.table_state SET copy_position = $2, rows_copied = rows_copied + $3 WHERE table_no = $1"
        ))
        .bind(t.no)
        .bind(chunk.upper)
        .bind(streamed as i64)
        .execute(&mut *tx)
        .await
        .context(|| "recording the copy position".into())?;
        tx.commit()
            .await
            .context(|| format!("committing a chunk of {}", t.display_name()))?;
        Ok(Some(added))
    }

    /// Streams the chunk into `into` (the table itself when `into_table`). A chunk holding a row
    /// too large for COPY's text format is copied again row by row, in the same snapshot
    /// ([`wide_rows`]).
    async fn stream_chunk(
        &self,
        src: &mut PgConnection,
        dst: &mut PgConnection,
        chunk: &Chunk<'_>,
        into: &str,
        into_table: bool,
    ) -> EngineResult<u64> {
        let t = &self.table;
        let savepoint = |sql: &'static str| sqlx::query(sql);
        for conn in [&mut *src, &mut *dst] {
            savepoint("SAVEPOINT pgshift_chunk")
                .execute(&mut *conn)
                .await
                .context(|| "opening a savepoint".into())?;
        }
        let streamed = stream(
            src,
            dst,
            chunk.copy_out,
            &format!("COPY {into} ({}) FROM STDIN", chunk.cols),
            &t.display_name(),
        )
        .await;
        match streamed {
            Err(err) if wide_rows::too_large(&err) => {
                tracing::info!(table = %t.display_name(), error = %err, "a row is too large for COPY; copying this chunk row by row");
                for conn in [&mut *src, &mut *dst] {
                    savepoint("ROLLBACK TO SAVEPOINT pgshift_chunk")
                        .execute(&mut *conn)
                        .await
                        .context(|| "rolling back to a savepoint".into())?;
                }
                let rows = wide_rows::Rows {
                    schema: &self.schema,
                    table: t,
                    from: chunk.from,
                    where_chunk: chunk.source_range,
                    src_ops: chunk.source_ops,
                    into,
                    into_table,
                    cols: chunk.cols,
                };
                wide_rows::copy(src, dst, &rows).await
            }
            other => other,
        }
    }

    /// Adds the rows of the temporary table that the worker has not touched.
    async fn merge(&self, tx: &mut PgConnection, chunk: &Chunk<'_>) -> EngineResult<u64> {
        let t = &self.table;
        let keys: Vec<String> = t.key.iter().map(|k| quote_ident(k)).collect();
        // Typed equality with the key's own operator: a deleted key written differently
        // (1.0 / 1.00, another case under citext) is still the same key.
        let ops = key_ops::key_operators(&mut *tx, t).await?;
        let same_key = |other: &str| {
            let left: Vec<String> = keys.iter().map(|k| format!("{other}.{k}")).collect();
            let right: Vec<String> = keys.iter().map(|k| format!("c.{k}")).collect();
            key_ops::key_equal(&ops, &left, &right)
        };
        let overriding = if t.columns.iter().any(|c| c.identity_always) {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let added = sqlx::query(&format!(
            "INSERT INTO {table} ({cols}){overriding}
             SELECT {cols} FROM {temp} c
              WHERE NOT EXISTS (SELECT 1 FROM {tombstones} d WHERE {tombstoned})
                AND NOT EXISTS (SELECT 1 FROM {own_rows} x WHERE {present})",
            table = t.sql_name(),
            own_rows = t.relation_only(),
            cols = chunk.cols,
            temp = chunk.temp,
            tombstones = row_format::tombstone_table(&self.schema, t),
            tombstoned = same_key("d"),
            // Not ON CONFLICT: a deferrable key cannot arbitrate it. The chunk holds the
            // table's lock, so nothing writes these keys meanwhile.
            present = same_key("x"),
        ))
        .execute(&mut *tx)
        .await
        .context(|| format!("merging a chunk into {}", t.display_name()))?
        .rows_affected();
        sqlx::query(&format!("TRUNCATE {}", chunk.temp))
            .execute(&mut *tx)
            .await
            .context(|| "emptying the chunk table".into())?;
        Ok(added)
    }

    /// The copy is complete: the table catches up until the worker applies a tick taken after
    /// now. Returns false when a truncate restarted the copy after its last chunk (the epoch
    /// moved on): the caller copies again instead of leaving the table pending.
    async fn finish(
        &self,
        src: &mut PgConnection,
        dst: &mut PgConnection,
        epoch: i32,
    ) -> EngineResult<bool> {
        let last_tick: i64 = sqlx::query_scalar(&format!(
            "SELECT coalesce(max(tick_id), 0) FROM {}.tick",
            quote_ident(&self.schema)
        ))
        .fetch_one(&mut *src)
        .await
        .context(|| "reading the latest tick".into())?;
        let schema = quote_ident(&self.schema);
        let mut tx = dst
            .begin()
            .await
            .context(|| "opening the copy's last transaction".into())?;
        let done = sqlx::query(&format!(
            "UPDATE {schema}.table_state
                SET state = 'catching_up', catchup_until_tick = $3, copy_finished_at = now()
              WHERE table_no = $1 AND copy_epoch = $2 AND state = 'copying'"
        ))
        .bind(self.table.no)
        .bind(epoch)
        .bind(last_tick + 1)
        .execute(&mut *tx)
        .await
        .context(|| "recording the end of the copy".into())?
        .rows_affected()
            == 1;
        if done {
            sqlx::query(&format!(
                "DELETE FROM {}",
                row_format::tombstone_table(&self.schema, &self.table)
            ))
            .execute(&mut *tx)
            .await
            .context(|| "forgetting the copy's tombstones".into())?;
        }
        tx.commit()
            .await
            .context(|| "committing the end of the copy".into())?;
        Ok(done)
    }
}

/// Opens a `REPEATABLE READ` transaction on the source and reads its snapshot: what a copy
/// reads in it is exactly what that snapshot saw.
async fn read_snapshot(
    src: &mut PgConnection,
) -> EngineResult<(sqlx::Transaction<'_, sqlx::Postgres>, String)> {
    let mut source_tx = src
        .begin()
        .await
        .context(|| "opening a copy transaction on the source".into())?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *source_tx)
        .await
        .context(|| "setting the copy's isolation level".into())?;
    let snapshot: String = sqlx::query_scalar("SELECT txid_current_snapshot()::text")
        .fetch_one(&mut *source_tx)
        .await
        .context(|| "reading the copy's snapshot".into())?;
    Ok((source_tx, snapshot))
}

/// One chunk of a table's copy.
struct Chunk<'a> {
    /// `COPY (SELECT …) TO STDOUT` on the source.
    copy_out: &'a str,
    /// The chunk's key range as a WHERE clause for the source (empty for a whole table), the
    /// key's operators there, and the table as the copy reads it.
    source_range: &'a str,
    source_ops: &'a [key_ops::ColumnOps],
    from: &'a str,
    /// The chunk's key range as a WHERE clause for the target (empty for a whole table).
    where_chunk: &'a str,
    /// Session-local table the chunk lands in when it has to be merged.
    temp: &'a str,
    cols: &'a str,
    epoch: i32,
    upper: Option<&'a [String]>,
}

/// Streams `COPY … TO STDOUT` on the source into `COPY … FROM STDIN` on the target.
/// Streams `copy_out` on the source into `copy_in` on the target (COPY's text format round-trips
/// every value exactly); `what` names the table in errors.
pub(crate) async fn stream(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    copy_out: &str,
    copy_in: &str,
    what: &str,
) -> EngineResult<u64> {
    let mut input = dst
        .copy_in_raw(copy_in)
        .await
        .context(|| format!("starting the copy into {what}"))?;
    let mut output = src
        .copy_out_raw(copy_out)
        .await
        .context(|| format!("starting the copy out of {what}"))?;
    loop {
        match output.try_next().await {
            Ok(Some(bytes)) => {
                if let Err(err) = input.send(bytes).await {
                    return Err(EngineError::Database {
                        context: format!("copying {what}"),
                        source: err,
                    });
                }
            }
            Ok(None) => break,
            Err(err) => {
                let _ = input.abort("the source failed").await;
                return Err(EngineError::Database {
                    context: format!("reading {what} from the source"),
                    source: err,
                });
            }
        }
    }
    drop(output);
    input
        .finish()
        .await
        .context(|| format!("finishing the copy into {what}"))
}
