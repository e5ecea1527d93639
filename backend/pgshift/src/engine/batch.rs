//! Engine layer: reading one batch from the source queue: the events of every transaction visible
//! in the new tick's snapshot and not in the applied one's, in event order, through a cursor so
//! that memory stays flat however big the batch is.

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
}

/// The query selecting the batch between two ticks, PgQ style: transactions that finished
/// between the two snapshots' xmax, plus those that were still running at the older tick.
pub fn batch_query(schema: &str, prev: &Snapshot, cur_text: &str, cur: &Snapshot) -> String {
    let schema = quote_ident(schema);
    let cols = "ev_id, ev_table, ev_op::text AS op, coalesce(ev_data, '') AS data";
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
}

pub const CURSOR: &str = "pgshift_batch";

/// Opens the batch cursor inside the caller's source transaction.
pub async fn open(conn: &mut PgConnection, query: &str) -> EngineResult<()> {
    sqlx::query(&format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR {query}"))
        .execute(conn)
        .await
        .context(|| "opening the batch cursor on the source".into())?;
    Ok(())
}

/// How many events to fetch next: at most `max_events`, and fewer when rows are wide, so that
/// one chunk holds about `budget_bytes` of row text (but always at least one event).
#[derive(Debug, Clone)]
pub struct FetchSize {
    max_events: usize,
    budget_bytes: usize,
    next: usize,
}

impl FetchSize {
    pub fn new(max_events: usize, budget_bytes: usize) -> Self {
        let max_events = max_events.max(1);
        Self {
            max_events,
            budget_bytes: budget_bytes.max(1),
            // Start small: the first chunk tells how wide this batch's rows are.
            next: max_events.min(100),
        }
    }

    pub fn next(&self) -> usize {
        self.next
    }

    /// Learns from a fetched chunk: the next one aims at the byte budget at this chunk's
    /// average row width.
    pub fn observe(&mut self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let bytes: usize = events.iter().map(|e| e.data.len() + 16).sum();
        let average = (bytes / events.len()).max(1);
        self.next = (self.budget_bytes / average).clamp(1, self.max_events);
    }
}

/// The next chunk of at most `limit` events; empty when the batch is exhausted.
pub async fn fetch(conn: &mut PgConnection, limit: usize) -> EngineResult<Vec<Event>> {
    let rows: Vec<PgRow> = sqlx::query(&format!("FETCH {limit} FROM {CURSOR}"))
        .fetch_all(conn)
        .await
        .context(|| "reading events from the source".into())?;
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
                other => {
                    return Err(EngineError::invalid(
                        "corrupt_event",
                        format!("unknown event operation {other:?}"),
                    ))
                }
            };
            Ok(Event {
                table_no: r.get("ev_table"),
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
    fn fetch_size_follows_row_width() {
        let event = |len: usize| Event {
            table_no: 1,
            op: Op::Upsert,
            data: "x".repeat(len),
        };
        let mut size = FetchSize::new(5_000, 1_000_000);
        assert_eq!(size.next(), 100);
        size.observe(&[event(84)]);
        assert_eq!(size.next(), 5_000);
        size.observe(&[event(499_984), event(499_984)]);
        assert_eq!(size.next(), 2);
        size.observe(&[event(10_000_000)]);
        assert_eq!(size.next(), 1);
    }

    #[test]
    fn batch_includes_transactions_running_at_the_previous_tick() {
        let prev = Snapshot::parse("10:20:12,15").unwrap();
        let cur = Snapshot::parse("14:30:15").unwrap();
        let q = batch_query("pgshift_x", &prev, "14:30:15", &cur);
        assert!(q.contains("ev_txid >= 20 AND ev_txid < 30"));
        // 12 finished between the ticks; 15 is still running.
        assert!(q.contains("ev_txid IN (12)"));
    }
}
