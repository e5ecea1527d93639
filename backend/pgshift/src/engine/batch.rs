//! Engine layer: reading one batch from the source queue: the events of every transaction visible
//! in the new tick's snapshot and not in the applied one's, in event order, through a cursor so
//! that memory stays flat however big the batch is.

use std::collections::VecDeque;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::error::Context;
use super::{quote_ident, EngineError, EngineResult};

/// A parsed `txid_snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: i64,
    pub xmax: i64,
    pub xip: Vec<i64>,
}

impl Snapshot {
    pub fn parse(text: &str) -> EngineResult<Self> {
        let bad = || {
            EngineError::invalid(
                "corrupt_snapshot",
                format!("unreadable txid snapshot {text:?}"),
            )
        };
        let mut parts = text.splitn(3, ':');
        let xmin = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xip = match parts.next() {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|x| x.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
        };
        Ok(Self { xmin, xmax, xip })
    }

    /// Whether every transaction visible in `earlier` is visible in this snapshot too.
    pub fn includes(&self, earlier: &Snapshot) -> bool {
        self.xmax >= earlier.xmax
            && self
                .xip
                .iter()
                .all(|x| *x >= earlier.xmax || earlier.xip.contains(x))
    }

    /// Whether a transaction's effects are visible in this snapshot (it committed before it).
    pub fn sees(&self, txid: i64) -> bool {
        txid < self.xmin || (txid < self.xmax && !self.xip.contains(&txid))
    }
}

/// One change event.
#[derive(Debug, Clone)]
pub struct Event {
    pub table_no: i32,
    /// The source transaction that wrote it: a table without a key that is still copying keeps
    /// its events with it, to tell which ones the copy's snapshot already saw (apply/keyless.rs).
    pub txid: i64,
    pub op: Op,
    /// The row's record text (the new row of an upsert, the old row of a delete), or the
    /// truncated relation's quoted name.
    pub data: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upsert,
    Delete,
    /// The old row of an update that changed the key: deleted only while the target still
    /// holds exactly that row.
    KeyChange,
    Truncate,
    /// A partition that appeared on the source (created or attached): its range is emptied
    /// here before the rows it holds follow as upserts.
    Appeared,
    /// One piece of one value of a row whose text form could not be built on the source
    /// (capture_row in install.sql): kept aside until the row is complete.
    Piece,
    /// The row whose pieces came before is complete: write it (an upsert).
    Assemble,
    /// A row that cannot be carried at all (a value whose own text form is over 1 GB); the
    /// payload says which and why.
    Unsendable,
    /// A schema change made through pgshift (table 0): its statements and the tables' new
    /// layout (ddl.rs). The worker runs it at this point of the stream.
    SchemaChange,
}

/// The batch between two ticks, as two queries over the same events in the same order: the
/// events themselves, and their sizes (read from the stored values' headers, without fetching
/// them), which say how many events the next chunk can hold.
#[derive(Debug, Clone)]
pub struct BatchQuery {
    pub events: String,
    pub sizes: String,
}

/// The query selecting the batch between two ticks, PgQ style: transactions that finished
/// between the two snapshots' xmax, plus those that were still running at the older tick.
pub fn batch_query(schema: &str, prev: &Snapshot, cur_text: &str, cur: &Snapshot) -> BatchQuery {
    let schema = quote_ident(schema);
    let select = |cols: &str| {
        let mut sql = format!(
            "SELECT {cols} FROM {schema}.event
              WHERE ev_txid >= {} AND ev_txid < {} AND txid_visible_in_snapshot(ev_txid, '{}'::txid_snapshot)",
            prev.xmax,
            cur.xmax,
            cur_text.replace('\'', "")
        );
        let late: Vec<String> = prev
            .xip
            .iter()
            .filter(|x| cur.sees(**x))
            .map(|x| x.to_string())
            .collect();
        if !late.is_empty() {
            sql.push_str(&format!(
                " UNION ALL SELECT {cols} FROM {schema}.event WHERE ev_txid IN ({})",
                late.join(",")
            ));
        }
        sql.push_str(" ORDER BY ev_id");
        sql
    };
    BatchQuery {
        events: select(
            "ev_id, ev_table, ev_txid, ev_op::text AS op, coalesce(ev_data, '') AS data",
        ),
        // octet_length of a stored text reads its size from the header (TOAST pointer or
        // compressed header): the value is not fetched.
        sizes: select("ev_id, coalesce(octet_length(ev_data), 0)::bigint AS bytes"),
    }
}

pub const CURSOR: &str = "pgshift_batch";
const SIZES: &str = "pgshift_batch_sizes";

/// Opens the batch's two cursors inside the caller's source transaction. Both run in the same
/// transaction over transactions that all committed before the tick: they yield the same events
/// in the same order.
pub async fn open(conn: &mut PgConnection, query: &BatchQuery) -> EngineResult<()> {
    sqlx::query(&format!(
        "DECLARE {CURSOR} NO SCROLL CURSOR FOR {}",
        query.events
    ))
    .execute(&mut *conn)
    .await
    .context(|| "opening the batch cursor on the source".into())?;
    sqlx::query(&format!(
        "DECLARE {SIZES} NO SCROLL CURSOR FOR {}",
        query.sizes
    ))
    .execute(&mut *conn)
    .await
    .context(|| "opening the batch's size cursor on the source".into())?;
    Ok(())
}

/// What an event costs in memory beyond its text (the struct, the other columns).
const EVENT_OVERHEAD: usize = 64;

/// How many events to fetch next: at most `max_events`, and no more than `budget_bytes` of
/// them (but always at least one event, however big). The sizes of the events ahead are read
/// first from a cursor that does not fetch their text, so a run of huge rows after small ones
/// is never loaded at once.
#[derive(Debug, Clone)]
pub struct FetchSize {
    max_events: usize,
    budget_bytes: usize,
    /// Sizes of the next events, in order, read ahead from the size cursor.
    ahead: VecDeque<usize>,
    /// The size cursor is exhausted.
    sizes_done: bool,
    /// The most bytes (by that measure) one chunk held, and the most events.
    peak_bytes: usize,
    peak_events: usize,
}

/// The next chunk's bounds: the [`FetchSize`] that decides it.
pub struct Limit<'a>(&'a mut FetchSize);

impl FetchSize {
    pub fn new(max_events: usize, budget_bytes: usize) -> Self {
        Self {
            max_events: max_events.max(1),
            budget_bytes: budget_bytes.max(1),
            ahead: VecDeque::new(),
            sizes_done: false,
            peak_bytes: 0,
            peak_events: 0,
        }
    }

    /// The bounds of the next chunk, for [`fetch`] (`batch::fetch(&mut src, size.next())`).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Limit<'_> {
        Limit(self)
    }

    /// Notes a fetched chunk's measure.
    pub fn observe(&mut self, events: &[Event]) {
        let bytes: usize = events.iter().map(|e| e.data.len() + EVENT_OVERHEAD).sum();
        self.peak_bytes = self.peak_bytes.max(bytes);
        self.peak_events = self.peak_events.max(events.len());
    }

    /// The most bytes one chunk held so far (event text plus a fixed overhead per event).
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    /// The most events one chunk held so far.
    pub fn peak_events(&self) -> usize {
        self.peak_events
    }

    /// How many of the events ahead fit the budget: at least one, at most `max_events`.
    fn take(&self) -> usize {
        let mut bytes = 0;
        let mut n = 0;
        for size in self.ahead.iter().take(self.max_events) {
            if n > 0 && bytes + size + EVENT_OVERHEAD > self.budget_bytes {
                break;
            }
            bytes += size + EVENT_OVERHEAD;
            n += 1;
        }
        n
    }

    /// Reads sizes ahead until they cover the budget or `max_events`, or the batch ends.
    async fn read_ahead(&mut self, conn: &mut PgConnection) -> EngineResult<()> {
        while !self.sizes_done
            && self.ahead.len() < self.max_events
            && self.ahead.iter().sum::<usize>() + self.ahead.len() * EVENT_OVERHEAD
                <= self.budget_bytes
        {
            let step = self.max_events;
            let rows: Vec<(i64, i64)> = sqlx::query_as(&format!("FETCH {step} FROM {SIZES}"))
                .fetch_all(&mut *conn)
                .await
                .context(|| "reading event sizes from the source".into())?;
            self.sizes_done = rows.len() < step;
            self.ahead
                .extend(rows.into_iter().map(|(_, bytes)| bytes.max(0) as usize));
        }
        Ok(())
    }
}

/// The next chunk of events within `limit`; empty when the batch is exhausted.
pub async fn fetch(conn: &mut PgConnection, limit: Limit<'_>) -> EngineResult<Vec<Event>> {
    let size = limit.0;
    size.read_ahead(&mut *conn).await?;
    let n = size.take();
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<PgRow> = sqlx::query(&format!("FETCH {n} FROM {CURSOR}"))
        .fetch_all(&mut *conn)
        .await
        .context(|| "reading events from the source".into())?;
    if rows.len() != n {
        return Err(EngineError::invalid(
            "batch_changed",
            format!(
                "the batch's events changed while it was read ({n} expected, {} found)",
                rows.len()
            ),
        ));
    }
    size.ahead.drain(..n);
    rows.into_iter()
        .map(|r| {
            let op: String = r.get("op");
            let op = match op.as_str() {
                "U" => Op::Upsert,
                "D" => Op::Delete,
                "K" => Op::KeyChange,
                "T" => Op::Truncate,
                "A" => Op::Appeared,
                "P" => Op::Piece,
                "W" => Op::Assemble,
                "E" => Op::Unsendable,
                "S" => Op::SchemaChange,
                other => {
                    return Err(EngineError::invalid(
                        "corrupt_event",
                        format!("unknown event operation {other:?}"),
                    ))
                }
            };
            Ok(Event {
                table_no: r.get("ev_table"),
                txid: r.get("ev_txid"),
                op,
                data: r.get("data"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse_and_judge_visibility() {
        let s = Snapshot::parse("100:105:101,103").unwrap();
        assert_eq!(
            s,
            Snapshot {
                xmin: 100,
                xmax: 105,
                xip: vec![101, 103]
            }
        );
        assert!(s.sees(99));
        assert!(s.sees(102));
        assert!(!s.sees(101));
        assert!(!s.sees(105));
        assert_eq!(Snapshot::parse("7:7:").unwrap().xip, Vec::<i64>::new());
        assert!(Snapshot::parse("x:1:").is_err());
    }

    #[test]
    fn later_snapshots_include_earlier_ones() {
        let early = Snapshot::parse("100:105:101,103").unwrap();
        assert!(Snapshot::parse("100:105:101,103").unwrap().includes(&early));
        assert!(Snapshot::parse("101:110:101,107").unwrap().includes(&early));
        // 104 was visible early and is shown running later: not a later snapshot.
        assert!(!Snapshot::parse("100:110:104").unwrap().includes(&early));
        assert!(!Snapshot::parse("100:104:").unwrap().includes(&early));
    }

    #[test]
    fn chunks_hold_the_budget_whatever_came_before() {
        let mut size = FetchSize::new(5_000, 1_000_000);
        size.ahead.extend([84; 100]);
        assert_eq!(size.take(), 100);
        // Wide rows after narrow ones: only what fits, and one at least.
        size.ahead.clear();
        size.ahead.extend([84, 84, 600_000, 600_000, 600_000]);
        assert_eq!(size.take(), 3);
        size.ahead.clear();
        size.ahead.extend([10_000_000, 84]);
        assert_eq!(size.take(), 1);
        size.ahead.clear();
        size.ahead.extend([1; 9_000]);
        assert_eq!(size.take(), 5_000);
    }

    #[test]
    fn batch_includes_transactions_running_at_the_previous_tick() {
        let prev = Snapshot::parse("10:20:12,15").unwrap();
        let cur = Snapshot::parse("14:30:15").unwrap();
        let q = batch_query("pgshift_x", &prev, "14:30:15", &cur);
        for q in [&q.events, &q.sizes] {
            assert!(q.contains("ev_txid >= 20 AND ev_txid < 30"));
            // 12 finished between the ticks; 15 is still running.
            assert!(q.contains("ev_txid IN (12)"));
        }
    }
}
