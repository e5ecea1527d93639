//! Engine layer: the copy of a table without a key. Without a key there are no ranges to copy
//! in chunks, and no way to tell a copied row from one the worker changed, so:
//! 1. the whole table is read in one snapshot S and written into the (empty) target table in
//!    one target transaction that also records S; a crash before its commit leaves the table
//!    empty and the copy starts again, after it the copy goes on at step 2;
//! 2. once the worker has applied every transaction S saw,
//! 3. one target transaction (under the table state's row lock, which the worker takes before
//!    holding an event) replays the events the worker held meanwhile whose transaction S did
//!    not see, in the order they were captured, forgets them all and marks the table catching up.
//!
//! Until then the worker holds the table's events instead of applying them (apply/keyless.rs).
//! The source transaction stays open for the whole read: a large table without a key holds back
//! vacuum on the source as long as it copies (the preview says so).

use std::collections::HashMap;

use sqlx::{Connection, PgConnection, Row};
use tokio_util::sync::CancellationToken;

use super::{stream, TableCopy};
use crate::engine::apply::{self, ChunkContext};
use crate::engine::batch::{Event, Op, Snapshot};
use crate::engine::error::Context;
use crate::engine::target::TableState;
use crate::engine::{quote_ident, EngineError, EngineResult};

/// How many held events are replayed at a time.
const REPLAY_PAGE: i64 = 10_000;

impl TableCopy {
    /// Copies a table without a key (see the module's notes); `epoch` is the copy's.
    pub(super) async fn copy_whole(
        &self,
        src: &mut PgConnection,
        dst: &mut PgConnection,
        epoch: i32,
        position: Option<Vec<String>>,
        cancel: &CancellationToken,
    ) -> EngineResult<()> {
        let snapshot = match position.as_deref() {
            Some([recorded]) => recorded.clone(),
            _ => match self.read_whole(src, dst, epoch, cancel).await? {
                Some(snapshot) => snapshot,
                None => return Ok(()), // a resync moved the epoch on: the next run copies again
            },
        };
        let seen = Snapshot::parse(&snapshot)?;
        self.wait_for_worker(dst, &seen, cancel).await?;
        self.land(src, dst, epoch, &snapshot).await
    }

    /// Step 1: the whole table in one snapshot. Returns the snapshot, or None when the copy's
    /// epoch moved on.
    async fn read_whole(
        &self,
        src: &mut PgConnection,
        dst: &mut PgConnection,
        epoch: i32,
        cancel: &CancellationToken,
    ) -> EngineResult<Option<String>> {
        let t = &self.table;
        let schema = quote_ident(&self.schema);
        let (mut source_tx, snapshot) = super::read_snapshot(src).await?;
        let mut tx = dst
            .begin()
            .await
            .context(|| "opening a copy transaction on the target".into())?;
        // Not under a row lock: the worker takes a share lock on this row to hold an event, and
        // must not wait for the whole read. The epoch is checked again when the copy is recorded.
        let current: i32 = sqlx::query_scalar(&format!(
            "SELECT copy_epoch FROM {schema}.table_state WHERE table_no = $1"
        ))
        .bind(t.no)
        .fetch_one(&mut *tx)
        .await
        .context(|| "reading the copy epoch".into())?;
        if current != epoch {
            return Ok(None);
        }
        // Rows already there would be counted twice: the table is empty unless someone wrote
        // to it behind pgshift's back.
        let occupied: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {})",
            t.relation_only()
        ))
        .fetch_one(&mut *tx)
        .await
        .context(|| format!("looking at {} on the target", t.display_name()))?;
        if occupied {
            return Err(EngineError::invalid(
                "target_not_empty",
                format!(
                    "{} already holds rows on the target; a table without a key is copied into an empty table: empty it on the target (or resync it), then start the migration again",
                    t.display_name()
                ),
            ));
        }
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let cols = t
            .writable_columns()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = stream(
            &mut source_tx,
            &mut tx,
            &format!("COPY (SELECT {cols} FROM {}) TO STDOUT", t.relation_only()),
            &format!("COPY {} ({cols}) FROM STDIN", t.sql_name()),
            &t.display_name(),
        )
        .await?;
        let partitions = if t.partitioned {
            crate::engine::partitions::listed(&mut source_tx, t).await?
        } else {
            Vec::new()
        };
        source_tx
            .commit()
            .await
            .context(|| "closing the copy transaction on the source".into())?;
        crate::engine::partitions::note_seen(src, &self.schema, t, &partitions).await?;
        let recorded = sqlx::query(&format!(
            "UPDATE {schema}.table_state SET copy_position = $2, rows_copied = $3
              WHERE table_no = $1 AND copy_epoch = $4"
        ))
        .bind(t.no)
        .bind([snapshot.as_str()])
        .bind(rows as i64)
        .bind(epoch)
        .execute(&mut *tx)
        .await
        .context(|| "recording the copy's snapshot".into())?
        .rows_affected();
        if recorded != 1 {
            // A resync moved the epoch on meanwhile: this read is void.
            return Ok(None);
        }
        tx.commit()
            .await
            .context(|| format!("committing the copy of {}", t.display_name()))?;
        self.status
            .table_copy(t.no, TableState::Copying, rows as i64, Some(rows as i64));
        Ok(Some(snapshot))
    }

    /// Step 3: replays the held events the copy's snapshot did not see, then the table catches
    /// up like any other.
    async fn land(
        &self,
        src: &mut PgConnection,
        dst: &mut PgConnection,
        epoch: i32,
        snapshot: &str,
    ) -> EngineResult<()> {
        let t = &self.table;
        let plan = self.keyless.as_ref().ok_or_else(|| {
            EngineError::invalid(
                "plan_missing",
                format!("no apply plan for {}", t.display_name()),
            )
        })?;
        let schema = quote_ident(&self.schema);
        let held = apply::keyless::held_table(&self.schema, t);
        let last_tick: i64 = sqlx::query_scalar(&format!(
            "SELECT coalesce(max(tick_id), 0) FROM {schema}.tick"
        ))
        .fetch_one(&mut *src)
        .await
        .context(|| "reading the latest tick".into())?;
        let mut tx = dst
            .begin()
            .await
            .context(|| "opening the copy's last transaction".into())?;
        // The worker holds an event only under a share lock on this row: from here on it
        // applies them to the table instead.
        let state: Option<(i32, String)> = sqlx::query_as(&format!(
            "SELECT copy_epoch, state FROM {schema}.table_state WHERE table_no = $1 FOR UPDATE"
        ))
        .bind(t.no)
        .fetch_optional(&mut *tx)
        .await
        .context(|| "locking the table's copy state".into())?;
        if state != Some((epoch, "copying".to_string())) {
            return Ok(());
        }
        let plans = HashMap::from([(t.no, plan.clone())]);
        let ctx = ChunkContext {
            plans: &plans,
            tombstone_tables: &|_| false,
            careful: false,
        };
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(&format!(
                "SELECT ord, txid, op::text, data FROM {held}
                  WHERE ord > $1 AND NOT txid_visible_in_snapshot(txid, $2::txid_snapshot)
                  ORDER BY ord LIMIT {REPLAY_PAGE}"
            ))
            .bind(after)
            .bind(snapshot)
            .fetch_all(&mut *tx)
            .await
            .context(|| format!("reading the held events of {}", t.display_name()))?;
            let Some(last) = rows.last() else { break };
            after = last.get(0);
            let events = rows
                .iter()
                .map(|r| {
                    let op: String = r.get(2);
                    Ok(Event {
                        table_no: t.no,
                        txid: r.get(1),
                        op: match op.as_str() {
                            "U" => Op::Upsert,
                            "D" => Op::Delete,
                            "T" => Op::Truncate,
                            "A" => Op::Appeared,
                            "E" => Op::Unsendable,
                            other => {
                                return Err(EngineError::invalid(
                                    "corrupt_event",
                                    format!(
                                        "a held event of {} has operation {other:?}",
                                        t.display_name()
                                    ),
                                ))
                            }
                        },
                        data: r.get(3),
                    })
                })
                .collect::<EngineResult<Vec<_>>>()?;
            apply::apply_chunk(&mut tx, &ctx, &events).await?;
        }
        apply::finish_batch(&mut tx, &ctx).await?;
        sqlx::query(&format!("DELETE FROM {held}"))
            .execute(&mut *tx)
            .await
            .context(|| "forgetting the held events".into())?;
        sqlx::query(&format!(
            "UPDATE {schema}.table_state
                SET state = 'catching_up', catchup_until_tick = $2, copy_finished_at = now()
              WHERE table_no = $1"
        ))
        .bind(t.no)
        .bind(last_tick + 1)
        .execute(&mut *tx)
        .await
        .context(|| "recording the end of the copy".into())?;
        tx.commit()
            .await
            .context(|| format!("committing the end of the copy of {}", t.display_name()))?;
        let p = self.progress(dst).await?;
        self.status
            .table_copy(t.no, p.state, p.rows_copied, p.rows_estimated);
        Ok(())
    }
}
