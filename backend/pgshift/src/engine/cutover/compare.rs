//! Engine layer (cutover): verification on demand, while replication runs. For each table pgshift
//! holds the table still on the source for a moment (the freeze's lock, rolled back instead of
//! committed), takes a tick, waits until the target has applied it, and opens a snapshot on both
//! sides: the two snapshots then hold the same rows for that table, whatever writes follow. The
//! lock is released before anything is compared, so source writes wait only for the target to catch
//! up with one tick, and never longer than the plan's bound ([`Plan::hold`]): when it is reached
//! the lock is released and the table is reported as not verified. Rows are compared over every
//! column the table has on both sides now (read from the catalogs in those snapshots), and a column
//! on one side only is a difference. Tables that differ are compared again in primary-key ranges;
//! `repair` rewrites only the ranges that differ, each under the same brief lock.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use super::shape::{self, Side, TableShape};
use super::verify::{self, KeyBound};
use super::{comparable_session, drain, freeze, repair};
use crate::engine::error::Context;
use crate::engine::{pg, EngineError, EngineResult};
use crate::store::TableSpec;

/// The connections a verification works with: three on the source, one on the target.
pub struct Connections {
    /// Holds the brief lock.
    pub source_lock: PgConnection,
    /// Takes ticks while the lock is held.
    pub source_tick: PgConnection,
    pub source: PgConnection,
    pub target: PgConnection,
}

impl Connections {
    /// Opens the four connections a comparison uses.
    pub async fn open(
        source: &sqlx::postgres::PgConnectOptions,
        target: &sqlx::postgres::PgConnectOptions,
    ) -> EngineResult<Self> {
        Ok(Self {
            source_lock: pg::connect("the source", source).await?,
            source_tick: pg::connect("the source", source).await?,
            source: pg::connect("the source", source).await?,
            target: pg::connect("the target", target).await?,
        })
    }
}

/// What to verify and how.
pub struct Plan<'a> {
    pub schema: &'a str,
    /// The freeze message, shown to a writer that hits the brief lock's trigger (none should:
    /// the lock is rolled back, never committed).
    pub message: &'a str,
    /// Longest time a table's writes are held: from the lock request until the lock is
    /// released, the wait for the lock, for the target and for what runs under it included.
    pub hold: Duration,
    /// The setting `hold` comes from, named when the bound is reached (`verify_hold_seconds`).
    pub hold_setting: &'a str,
    /// Rows per compared key range.
    pub range_rows: i64,
}

/// The longest wait for the brief lock itself (writers in flight), within the bound.
const LOCK_WAIT: Duration = Duration::from_secs(2);

impl Plan<'_> {
    /// The failure of a table let go at the bound: `not_done` says what had not happened yet.
    fn let_go(&self, table: &TableSpec, not_done: &str) -> EngineError {
        EngineError::invalid(
            "hold_exceeded",
            format!(
                "{}: its writes were held for {} s, the bound ({}), and {not_done}; the lock was released",
                table.display_name(),
                self.hold.as_secs_f64(),
                self.hold_setting
            ),
        )
    }
}

/// Whether `e` let a table go without an answer (its lock not obtained in time, or its writes
/// held up to the bound) rather than failing the verification: the comparison's connections may
/// then be in the middle of a statement, so open new ones before going on.
pub fn let_go(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Invalid {
            code: "hold_exceeded" | "lock_timeout",
            ..
        }
    )
}

/// One table's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct TableVerdict {
    pub table: String,
    /// `match` or `differs`.
    pub state: &'static str,
    pub source_rows: i64,
    pub target_rows: i64,
    /// Where the table's definitions differ, e.g. `public.t: column w exists only on the
    /// target`. Rows are compared over the columns both sides have.
    pub differences: Vec<String>,
    pub differing_ranges: Vec<Value>,
    /// How long source writes to this table were held back, in seconds.
    pub writes_held_seconds: f64,
    /// Why the table was not verified (state `not_verified`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    ranges: Vec<(Option<KeyBound>, Option<KeyBound>)>,
    #[serde(skip)]
    shape: Option<TableShape>,
}

impl TableVerdict {
    pub fn differs(&self) -> bool {
        self.state == "differs"
    }

    /// A table let go without an answer (see [`let_go`]).
    pub fn not_verified(table: &TableSpec, why: String, held: Duration) -> Self {
        Self {
            table: table.display_name(),
            state: "not_verified",
            source_rows: 0,
            target_rows: 0,
            differences: Vec::new(),
            differing_ranges: Vec::new(),
            writes_held_seconds: held.as_secs_f64(),
            error: Some(why),
            ranges: Vec::new(),
            shape: None,
        }
    }
}

/// Holds `table` still on the source, takes a tick and waits until the target applied it, then
/// runs `inside` (while the lock holds; `inside_what` says what it does) and releases the lock.
/// Returns the outcome and how long writes were held. Writes are held at most `plan.hold`: when
/// that is reached, the lock is released whatever is still running and the outcome is a
/// `hold_exceeded` error (see [`let_go`]); the `Err` of the whole is for a lock that could not
/// be taken or released at all.
pub(super) async fn with_table_held<F, T>(
    conns: &mut Connections,
    plan: &Plan<'_>,
    table: &TableSpec,
    cancel: &CancellationToken,
    inside_what: &str,
    inside: F,
) -> EngineResult<(EngineResult<T>, Duration)>
where
    F: for<'c> FnOnce(
        &'c mut PgConnection,
        &'c mut PgConnection,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = EngineResult<T>> + Send + 'c>,
    >,
{
    let held_from = Instant::now();
    let deadline = held_from + plan.hold;
    let mut lock = conns
        .source_lock
        .begin()
        .await
        .context(|| "opening the lock transaction on the source".into())?;
    let outcome = async {
        freeze::lock_in(
            &mut lock,
            plan.schema,
            std::slice::from_ref(table),
            plan.message,
            plan.hold.min(LOCK_WAIT),
        )
        .await?;
        // The lock's own connection stays out of what follows, so that it can always be
        // released at the bound, whatever the others are doing then.
        let caught_up = async {
            let tick = drain::final_tick(&mut conns.source_tick, plan.schema).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            drain::wait_applied(&mut conns.target, plan.schema, tick, left, cancel).await
        };
        let not_applied = "the target had not yet applied what was written before";
        match tokio::time::timeout_at(deadline.into(), caught_up).await {
            Ok(Ok(_)) => {}
            Ok(Err(EngineError::Invalid {
                code: "drain_timeout",
                ..
            }))
            | Err(_) => return Err(plan.let_go(table, not_applied)),
            Ok(Err(e)) => return Err(e),
        }
        let work = inside(&mut conns.source, &mut conns.target);
        match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(done) => done,
            Err(_) => Err(plan.let_go(table, &format!("{inside_what} had not finished"))),
        }
    }
    .await;
    lock.rollback()
        .await
        .context(|| "releasing the lock on the source".into())?;
    Ok((outcome, held_from.elapsed()))
}

pub(super) async fn begin_snapshot(conn: &mut PgConnection, what: &str) -> EngineResult<()> {
    crate::engine::pg::run_script(
        conn,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1",
    )
    .await
    .context(|| format!("opening a snapshot on the {what}"))
}

pub(super) async fn end_snapshot(conn: &mut PgConnection, what: &str) -> EngineResult<()> {
    crate::engine::pg::run_script(conn, "COMMIT")
        .await
        .context(|| format!("closing the snapshot on the {what}"))
}

/// Compares one table at a common point.
pub async fn verify_table(
    conns: &mut Connections,
    plan: &Plan<'_>,
    table: &TableSpec,
    cancel: &CancellationToken,
) -> EngineResult<TableVerdict> {
    comparable_session(&mut conns.source).await?;
    comparable_session(&mut conns.target).await?;
    let (opened, held) = with_table_held(
        conns,
        plan,
        table,
        cancel,
        "opening the snapshots",
        |src, dst| {
            Box::pin(async move {
                begin_snapshot(src, "source").await?;
                begin_snapshot(dst, "target").await
            })
        },
    )
    .await?;
    match opened {
        Ok(()) => {}
        Err(e) if let_go(&e) => return Ok(TableVerdict::not_verified(table, e.shown(), held)),
        Err(e) => return Err(e),
    }
    let outcome = compare_in_snapshots(conns, plan, table).await;
    // Close both snapshots whatever happened.
    let closed_src = end_snapshot(&mut conns.source, "source").await;
    let closed_dst = end_snapshot(&mut conns.target, "target").await;
    let mut verdict = outcome?;
    closed_src?;
    closed_dst?;
    verdict.writes_held_seconds = held.as_secs_f64();
    Ok(verdict)
}

async fn compare_in_snapshots(
    conns: &mut Connections,
    plan: &Plan<'_>,
    table: &TableSpec,
) -> EngineResult<TableVerdict> {
    let shape = shape::read(&mut conns.source, &mut conns.target, table).await?;
    let mut verdict = TableVerdict {
        table: table.display_name(),
        state: if shape.differences.is_empty() {
            "match"
        } else {
            "differs"
        },
        source_rows: 0,
        target_rows: 0,
        differences: shape.differences.clone(),
        differing_ranges: Vec::new(),
        writes_held_seconds: 0.0,
        error: None,
        ranges: Vec::new(),
        shape: None,
    };
    if !shape.comparable {
        return Ok(verdict);
    }
    let src_all = verify::table_digest(&mut conns.source, &shape, Side::Source, true).await?;
    let dst_all = verify::table_digest(&mut conns.target, &shape, Side::Target, true).await?;
    verdict.source_rows = src_all.rows;
    verdict.target_rows = dst_all.rows;
    if src_all != dst_all {
        verdict.state = "differs";
        let bounds = verify::range_bounds(&mut conns.source, &shape, plan.range_rows).await?;
        let mut lo: Option<KeyBound> = None;
        for i in 0..=bounds.len() {
            let hi = bounds.get(i).cloned();
            let a = verify::range_digest(
                &mut conns.source,
                &shape,
                Side::Source,
                lo.as_ref(),
                hi.as_ref(),
            )
            .await?;
            let b = verify::range_digest(
                &mut conns.target,
                &shape,
                Side::Target,
                lo.as_ref(),
                hi.as_ref(),
            )
            .await?;
            if a != b {
                let mut range = verify::range_json(lo.as_ref(), hi.as_ref());
                range["source_rows"] = a.rows.into();
                range["target_rows"] = b.rows.into();
                verdict.differing_ranges.push(range);
                verdict.ranges.push((lo.clone(), hi.clone()));
            }
            lo = hi;
        }
    }
    verdict.shape = Some(shape);
    Ok(verdict)
}

/// Rewrites the differing ranges of `verdict` on the target from the source, each under the
/// brief lock, over the columns both sides have; returns the rows written. A column on one side
/// only is not something a copy can fix: it stays a difference. A range whose hold reaches the
/// bound is rolled back and the repair stops there with a `hold_exceeded` error (see
/// [`let_go`]); the ranges before it stay repaired.
pub async fn repair_table(
    conns: &mut Connections,
    plan: &Plan<'_>,
    table: &TableSpec,
    verdict: &TableVerdict,
    cancel: &CancellationToken,
) -> EngineResult<u64> {
    let Some(shape) = verdict.shape.as_ref() else {
        return Ok(0);
    };
    let mut rows = 0;
    for (lo, hi) in &verdict.ranges {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let (shape, lo, hi) = (shape.clone(), lo.clone(), hi.clone());
        let (written, _) = with_table_held(
            conns,
            plan,
            table,
            cancel,
            "rewriting a differing key range",
            move |src, dst| {
                Box::pin(async move {
                    let mut tx = dst
                        .begin()
                        .await
                        .context(|| "opening the repair transaction on the target".into())?;
                    sqlx::query("SET LOCAL session_replication_role = replica")
                        .execute(&mut *tx)
                        .await
                        .context(|| "setting session_replication_role on the target".into())?;
                    let rows =
                        repair::copy_range(src, &mut tx, &shape, lo.as_ref(), hi.as_ref()).await?;
                    tx.commit()
                        .await
                        .context(|| "committing the repair on the target".into())?;
                    Ok(rows)
                })
            },
        )
        .await?;
        rows += written?;
    }
    Ok(rows)
}
