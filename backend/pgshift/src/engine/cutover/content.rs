//! Engine layer (cutover): the cutover's content verification, in two passes, so that comparing
//! every row costs no blocked writes beyond what changed at the very end.
//!
//! **Before the freeze** ([`range_pass`]), while writes go on, every table is compared key range
//! by key range over the columns both sides have now. Each range is read in its own short
//! snapshot on each side (no long transaction on the source), and each side remembers the
//! oldest `xmin` of those snapshots. The two sides' snapshots are taken at about the same time
//! but not at the same point of the stream, so a range can differ only because the target has
//! not applied its latest changes yet: such ranges are compared again at a common point, with
//! the table held still for a moment as on-demand verification does. A range that still differs
//! there differs for real, and the cutover stops before anything is frozen.
//!
//! **Inside the freeze** ([`recheck`]), once the target has applied the final tick, each side is
//! read once more in a single pass that computes no row text: the row count, a checksum of the
//! key set, and the keys of the row versions written by a transaction not older than the
//! remembered `xmin` (any row version a range snapshot did not see has such an `xmin`). Only the
//! rows of those keys are compared. Why that is enough: a key outside that set has, on each side,
//! either the row the range pass compared equal, or no row at all (deleting leaves no new row
//! version). So the two sides can only differ by a key deleted on one side and not on the other,
//! which the key-set checksum shows. Nothing here trusts the change capture: a row written by a
//! session capture does not see, or on the target behind pgshift's back, is found the same way.
//! The pass reads row headers and keys only and renders no row: three to four times what counting
//! the rows costs (which is what the cutover used to do inside the freeze), and far less than a
//! checksum of every row (docs/benchmarks/verify-cost.md).

use std::collections::HashSet;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use super::compare::{begin_snapshot, end_snapshot, with_table_held, Connections, Plan};
use super::shape::{self, Side, TableShape};
use super::since;
use super::verify::{self, KeyBound};
use crate::engine::error::Context;
use crate::engine::{EngineError, EngineResult};
use crate::store::TableSpec;

/// Keys named in a verdict, at most.
const KEYS_SHOWN: usize = 10;

/// One table after the range pass, as the cutover step shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RangeVerdict {
    pub table: String,
    /// `match` or `differs`.
    pub state: &'static str,
    /// Rows compared on each side (over ranges read at slightly different moments).
    pub source_rows: i64,
    pub target_rows: i64,
    pub ranges: usize,
    /// Ranges compared a second time at a common point (they differed at first, most often
    /// only because the target had not caught up yet).
    pub ranges_rechecked: usize,
    /// Ranges that differ at a common point, with the keys that differ in them.
    pub differing_ranges: Vec<Value>,
    /// One sentence per difference.
    pub differences: Vec<String>,
    /// How long source writes to this table were held back for the common point, in seconds.
    pub writes_held_seconds: f64,
}

impl RangeVerdict {
    pub fn differs(&self) -> bool {
        self.state == "differs"
    }
}

/// What the range pass leaves for the check inside the freeze.
#[derive(Debug, Clone)]
pub struct Baseline {
    shape: TableShape,
    key_hash: since::KeyHash,
    /// On each side, the oldest `xmin` of the snapshots the ranges were compared in.
    since: [i64; 2],
}

/// The snapshot `xmin` of the open transaction on `conn`.
async fn snapshot_xmin(conn: &mut PgConnection, side: Side) -> EngineResult<i64> {
    sqlx::query_scalar("SELECT txid_snapshot_xmin(txid_current_snapshot())")
        .fetch_one(conn)
        .await
        .context(|| format!("reading the snapshot on the {}", side.words()))
}

/// Opens a snapshot on both sides, runs `work` in them and closes them whatever happened;
/// returns the result and each side's snapshot `xmin`.
async fn in_snapshots<T>(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    work: impl AsyncFnOnce(&mut PgConnection, &mut PgConnection) -> EngineResult<T>,
) -> EngineResult<(T, [i64; 2])> {
    begin_snapshot(src, "source").await?;
    if let Err(e) = begin_snapshot(dst, "target").await {
        let _ = end_snapshot(src, "source").await;
        return Err(e);
    }
    let outcome = async {
        let a = snapshot_xmin(src, Side::Source).await?;
        let b = snapshot_xmin(dst, Side::Target).await?;
        Ok::<_, EngineError>((work(src, dst).await?, [a, b]))
    }
    .await;
    let closed_src = end_snapshot(src, "source").await;
    let closed_dst = end_snapshot(dst, "target").await;
    let outcome = outcome?;
    closed_src?;
    closed_dst?;
    Ok(outcome)
}

type Range = (Option<KeyBound>, Option<KeyBound>);

/// Compares `table` range by range while writes go on (see the module's notes). The caller has
/// made `conns.source` and `conns.target` comparable sessions.
pub async fn range_pass(
    conns: &mut Connections,
    plan: &Plan<'_>,
    table: &TableSpec,
    cancel: &CancellationToken,
) -> EngineResult<(RangeVerdict, Option<Baseline>)> {
    let shape = shape::read(&mut conns.source, &mut conns.target, table).await?;
    let mut verdict = RangeVerdict {
        table: shape.name.clone(),
        state: "match",
        source_rows: 0,
        target_rows: 0,
        ranges: 0,
        ranges_rechecked: 0,
        differing_ranges: Vec::new(),
        differences: shape.differences.clone(),
        writes_held_seconds: 0.0,
    };
    if !shape.differences.is_empty() || !shape.comparable {
        verdict.state = "differs";
        return Ok((verdict, None));
    }
    let mut since = [i64::MAX, i64::MAX];
    let mut suspect: Vec<Range> = Vec::new();
    let mut lo: Option<KeyBound> = None;
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let from = lo.clone();
        let ((hi, a, b), xmins) =
            in_snapshots(&mut conns.source, &mut conns.target, async |src, dst| {
                let hi = verify::next_bound(src, &shape, from.as_ref(), plan.range_rows).await?;
                let (a, b) = tokio::join!(
                    verify::range_digest(src, &shape, Side::Source, from.as_ref(), hi.as_ref()),
                    verify::range_digest(dst, &shape, Side::Target, from.as_ref(), hi.as_ref())
                );
                Ok((hi, a?, b?))
            })
            .await?;
        since = [since[0].min(xmins[0]), since[1].min(xmins[1])];
        verdict.ranges += 1;
        verdict.source_rows += a.rows;
        verdict.target_rows += b.rows;
        if a != b {
            suspect.push((lo.clone(), hi.clone()));
        }
        match hi {
            Some(hi) => lo = Some(hi),
            None => break,
        }
    }
    if !suspect.is_empty() {
        verdict.ranges_rechecked = suspect.len();
        let started = Instant::now();
        let (differing, xmins) =
            recheck_at_common_point(conns, plan, table, &shape, &suspect, cancel).await?;
        verdict.writes_held_seconds = started.elapsed().as_secs_f64();
        since = [since[0].min(xmins[0]), since[1].min(xmins[1])];
        for (range, keys) in differing {
            verdict.differences.push(format!(
                "{}: rows differ in the key range {}: {}",
                shape.name,
                range_words(&range),
                keys_words(&keys)
            ));
            let mut shown = verify::range_json(range.0.as_ref(), range.1.as_ref());
            shown["keys"] = serde_json::json!(keys);
            verdict.differing_ranges.push(shown);
        }
    }
    if !verdict.differences.is_empty() {
        verdict.state = "differs";
    }
    let key_hash = since::key_hash(&mut conns.source, &mut conns.target).await;
    Ok((
        verdict,
        Some(Baseline {
            shape,
            key_hash,
            since,
        }),
    ))
}

/// Compares `ranges` again with both sides at one point of the stream (the table held still on
/// the source until the target has applied a tick taken meanwhile); returns the ranges that still
/// differ, each with the keys that differ, and each side's snapshot `xmin`.
async fn recheck_at_common_point(
    conns: &mut Connections,
    plan: &Plan<'_>,
    table: &TableSpec,
    shape: &TableShape,
    ranges: &[Range],
    cancel: &CancellationToken,
) -> EngineResult<(Vec<(Range, Vec<KeyBound>)>, [i64; 2])> {
    let (opened, _) = with_table_held(
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
    opened?;
    let outcome = async {
        let xmins = [
            snapshot_xmin(&mut conns.source, Side::Source).await?,
            snapshot_xmin(&mut conns.target, Side::Target).await?,
        ];
        let mut differing = Vec::new();
        for (lo, hi) in ranges {
            let (lo, hi) = (lo.as_ref(), hi.as_ref());
            if shape.key.is_empty() {
                // No key to name rows by: the whole table's digests decide.
                let (a, b) = tokio::join!(
                    verify::table_digest(&mut conns.source, shape, Side::Source, true),
                    verify::table_digest(&mut conns.target, shape, Side::Target, true)
                );
                if a? != b? {
                    differing.push(((None, None), Vec::new()));
                }
                continue;
            }
            let (a, b) = tokio::join!(
                verify::range_rows(&mut conns.source, shape, Side::Source, lo, hi),
                verify::range_rows(&mut conns.target, shape, Side::Target, lo, hi)
            );
            let keys = verify::differing_keys(&a?, &b?, KEYS_SHOWN);
            if !keys.is_empty() {
                differing.push(((lo.cloned(), hi.cloned()), keys));
            }
        }
        Ok::<_, EngineError>((differing, xmins))
    }
    .await;
    let closed_src = end_snapshot(&mut conns.source, "source").await;
    let closed_dst = end_snapshot(&mut conns.target, "target").await;
    let outcome = outcome?;
    closed_src?;
    closed_dst?;
    Ok(outcome)
}

fn range_words((lo, hi): &Range) -> String {
    let end =
        |b: &Option<KeyBound>, open: &str| b.as_ref().map_or(open.to_string(), verify::key_words);
    format!("({}, {}]", end(lo, "start"), end(hi, "end"))
}

fn keys_words(keys: &[KeyBound]) -> String {
    if keys.is_empty() {
        return "whole rows differ (the table has no key to name them by)".into();
    }
    let shown: Vec<String> = keys.iter().map(verify::key_words).collect();
    format!(
        "key{} {}{}",
        if keys.len() == 1 { "" } else { "s" },
        shown.join(", "),
        if keys.len() >= KEYS_SHOWN {
            ", …"
        } else {
            ""
        }
    )
}

/// One table compared inside the freeze.
#[derive(Debug, Clone, Serialize)]
pub struct FreezeVerdict {
    pub table: String,
    pub matches: bool,
    pub source_rows: i64,
    pub target_rows: i64,
    /// Rows compared again (written since the range pass, on either side).
    pub rows_rechecked: usize,
    /// One sentence per difference.
    pub differences: Vec<String>,
}

impl FreezeVerdict {
    /// Nothing compared yet: the table's definitions' differences only.
    fn unverified(shape: &TableShape) -> Self {
        Self {
            table: shape.name.clone(),
            matches: false,
            source_rows: 0,
            target_rows: 0,
            rows_rechecked: 0,
            differences: shape.differences.clone(),
        }
    }
}

/// Compares `table` inside the freeze, after the drain: only what may have changed since the
/// range pass (see the module's notes). Sessions must be comparable.
pub async fn recheck(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    table: &TableSpec,
    baseline: &Baseline,
) -> EngineResult<FreezeVerdict> {
    let shape = shape::read(src, dst, table).await?;
    let mut verdict = FreezeVerdict::unverified(&shape);
    if !shape.differences.is_empty() || !shape.comparable {
        return Ok(verdict);
    }
    if !shape.same_columns(&baseline.shape) || shape.key.is_empty() {
        // The definitions changed since the range pass (on both sides alike): rows that kept
        // their versions may read differently now, so every row is compared. A table without
        // a key has no keys to recheck by: every row is compared too (inside the freeze: the
        // preview warns about large keyless tables).
        let (a, b) = tokio::join!(
            verify::table_digest(src, &shape, Side::Source, true),
            verify::table_digest(dst, &shape, Side::Target, true)
        );
        let (a, b) = (a?, b?);
        verdict.source_rows = a.rows;
        verdict.target_rows = b.rows;
        verdict.rows_rechecked = a.rows.max(b.rows) as usize;
        if a != b {
            verdict.differences.push(format!(
                "{}: rows differ (the columns changed since the range pass, so every row was compared)",
                shape.name
            ));
        }
        verdict.matches = verdict.differences.is_empty();
        return Ok(verdict);
    }
    let (a, b) = tokio::join!(
        since::scan_since(
            src,
            &shape,
            Side::Source,
            baseline.since[0],
            baseline.key_hash
        ),
        since::scan_since(
            dst,
            &shape,
            Side::Target,
            baseline.since[1],
            baseline.key_hash
        )
    );
    let (a, b) = (a?, b?);
    verdict.source_rows = a.rows;
    verdict.target_rows = b.rows;
    let mut seen = HashSet::new();
    let keys: Vec<KeyBound> = a
        .written
        .into_iter()
        .chain(b.written)
        .filter(|k| seen.insert(k.clone()))
        .collect();
    verdict.rows_rechecked = keys.len();
    let (ra, rb) = tokio::join!(
        since::rows_of(src, &shape, Side::Source, &keys),
        since::rows_of(dst, &shape, Side::Target, &keys)
    );
    let (ra, rb) = (ra?, rb?);
    let mut differing: Vec<KeyBound> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            let n = *i as i64 + 1;
            ra.get(&n) != rb.get(&n)
        })
        .map(|(_, k)| k.clone())
        .collect();
    let count = differing.len();
    differing.truncate(KEYS_SHOWN);
    if count > 0 {
        verdict.differences.push(format!(
            "{}: {count} row{} written since the range pass differ{}: {}",
            shape.name,
            if count == 1 { "" } else { "s" },
            if count == 1 { "s" } else { "" },
            keys_words(&differing)
        ));
    }
    if a.rows != b.rows {
        verdict.differences.push(format!(
            "{}: {} rows on the source, {} on the target",
            shape.name, a.rows, b.rows
        ));
    } else if a.keys_checksum != b.keys_checksum {
        verdict.differences.push(format!(
            "{}: as many rows on both sides but not the same keys (a row deleted on one side only)",
            shape.name
        ));
    }
    verdict.matches = verdict.differences.is_empty();
    Ok(verdict)
}

/// Counts only (`checksums: false`): each side's row count, and the definitions compared.
pub async fn counts(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    table: &TableSpec,
) -> EngineResult<FreezeVerdict> {
    let shape = shape::read(src, dst, table).await?;
    let mut verdict = FreezeVerdict::unverified(&shape);
    if !shape.comparable {
        return Ok(verdict);
    }
    let (a, b) = tokio::join!(
        verify::table_digest(src, &shape, Side::Source, false),
        verify::table_digest(dst, &shape, Side::Target, false)
    );
    let (a, b) = (a?, b?);
    verdict.source_rows = a.rows;
    verdict.target_rows = b.rows;
    if a.rows != b.rows {
        verdict.differences.push(format!(
            "{}: {} rows on the source, {} on the target",
            shape.name, a.rows, b.rows
        ));
    }
    verdict.matches = verdict.differences.is_empty();
    Ok(verdict)
}
