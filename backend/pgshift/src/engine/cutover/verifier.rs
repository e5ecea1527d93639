//! Engine layer: the cutover's verification: by default the content of every table, over every
//! column it has on each side now, compared range by range before the freeze and, inside the
//! freeze, only what changed since (see `content`); with `checksums: false` the row counts only.

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::content::{self, Baseline, FreezeVerdict, RangeVerdict};
use super::{comparable_session, compare};
use crate::engine::{pg, EngineError, EngineResult, Supervisor};
use crate::store::{MigrationRecord, TableSpec};

/// Rows per key range of the range pass.
const RANGE_ROWS: i64 = 10_000;

/// The verification's own connections (comparable sessions), opened before the freeze so that
/// the blocked window does not pay for connecting, and what the range pass learned.
pub(super) struct Verifier {
    conns: compare::Connections,
    schema: String,
    message: String,
    drain_timeout: Duration,
    baselines: HashMap<i32, Baseline>,
}

impl Verifier {
    pub(super) async fn connect(
        supervisor: &Supervisor,
        record: &MigrationRecord,
        drain_timeout: Duration,
    ) -> EngineResult<Self> {
        let (source, target) = supervisor.endpoints(record).await?;
        let mut conns = compare::Connections::open(&source, &target).await?;
        // No comparison waits longer than the cutover's own timeout for a lock (a table held
        // exclusively on either side), before the freeze or inside it.
        let lock_timeout = format!(
            "SET lock_timeout = '{}ms'",
            drain_timeout.as_millis().max(1)
        );
        for conn in [&mut conns.source, &mut conns.target] {
            comparable_session(conn).await?;
            pg::run_script(conn, &lock_timeout)
                .await
                .map_err(|e| EngineError::Database {
                    context: "setting lock_timeout for the comparison".into(),
                    source: e,
                })?;
        }
        Ok(Self {
            conns,
            schema: record.schema_name(),
            message: format!(
                "pgshift migration {:?} is comparing this table before its cutover; retry in a moment",
                record.name
            ),
            drain_timeout,
            baselines: HashMap::new(),
        })
    }

    /// Before the freeze: every table compared range by range while writes go on.
    pub(super) async fn range_pass(
        &mut self,
        tables: &[TableSpec],
        cancel: &CancellationToken,
    ) -> EngineResult<Vec<RangeVerdict>> {
        let plan = compare::Plan {
            schema: &self.schema,
            message: &self.message,
            hold: self.drain_timeout,
            hold_setting: "timeout_seconds",
            range_rows: RANGE_ROWS,
        };
        let mut verdicts = Vec::new();
        for t in tables {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let (verdict, baseline) =
                content::range_pass(&mut self.conns, &plan, t, cancel).await?;
            if let Some(b) = baseline {
                self.baselines.insert(t.no, b);
            }
            verdicts.push(verdict);
        }
        Ok(verdicts)
    }

    /// Inside the freeze, after the drain: what changed since the range pass (`content`), or
    /// the row counts.
    pub(super) async fn in_freeze(
        &mut self,
        tables: &[TableSpec],
        content: bool,
    ) -> EngineResult<Vec<FreezeVerdict>> {
        let (src, dst) = (&mut self.conns.source, &mut self.conns.target);
        let mut verdicts = Vec::new();
        for t in tables {
            verdicts.push(match (content, self.baselines.get(&t.no)) {
                (true, Some(b)) => content::recheck(src, dst, t, b).await?,
                (true, None) => {
                    return Err(EngineError::invalid(
                        "verify_failed",
                        format!("{} was not compared before the freeze", t.display_name()),
                    ))
                }
                (false, _) => content::counts(src, dst, t).await?,
            });
        }
        Ok(verdicts)
    }
}

/// The differences of the verdicts that differ, in one line.
pub(super) fn differences<'a>(all: impl Iterator<Item = &'a Vec<String>>) -> String {
    all.flatten().cloned().collect::<Vec<_>>().join("; ")
}
