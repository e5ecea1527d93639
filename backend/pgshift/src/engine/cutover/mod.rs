//! Engine layer: the cutover and its companions. `sequence` owns the cutover's state machine and
//! `on_demand` the verification's; each reports its steps through a [`StepRecorder`] (the
//! service's operation record). The steps, one file each: preflight gates, the freeze of source
//! writes, the drain, sequences, verification (at cutover and on demand, with repair) and the
//! reverse migration that makes a rollback a second cutover; they work on connections given.

pub mod compare;
pub mod content;
pub mod drain;
pub mod foreign_keys;
pub mod freeze;
pub mod gates;
pub mod on_demand;
mod outside;
pub mod repair;
pub mod reverse;
pub mod sequence;
pub mod sequences;
pub mod shape;
pub mod since;
mod verifier;
pub mod verify;
mod wraparound;

use serde_json::Value;
use sqlx::PgConnection;

use super::error::Context;
use super::EngineResult;
use crate::store::{OperationState, StepOutcome};

/// Where a cutover or verification reports its steps as they happen (the service's operation
/// record, which stores them and tells the webhook). The engine runs the steps; the recorder
/// only writes them down.
#[async_trait::async_trait]
pub trait StepRecorder: Send {
    /// A step starts.
    async fn begin(&mut self, step: &str);
    /// The current step ends.
    async fn end(&mut self, outcome: StepOutcome, detail: Value);
    /// Whether a step has begun and not ended.
    fn step_open(&self) -> bool;
}

/// How a cutover or verification ended, for its record.
#[derive(Debug)]
pub struct Finished {
    pub state: OperationState,
    pub result: Value,
    /// What went wrong, in words a caller may read.
    pub error: Option<String>,
}

/// Session settings under which both sides render values the same way, so row text, key
/// bounds and checksums compare across servers whatever the database's or role's defaults are:
/// every setting that shapes a value's text (dates, time zones, intervals, floats, bytea,
/// money), a search_path holding only the catalog (type names and regclass values come out
/// schema-qualified, and no user object can stand in for a built-in), and `row_security = off`
/// so that a policy filtering pgshift's reads fails the comparison instead of shrinking both
/// sides alike.
pub async fn comparable_session(conn: &mut PgConnection) -> EngineResult<()> {
    super::pg::run_script(
        conn,
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
         SET extra_float_digits = 3; SET bytea_output = 'hex'; SET lc_monetary = 'C'; \
         SET search_path = pg_catalog, pg_temp; SET row_security = off",
    )
    .await
    .context(|| "setting session options for comparison".into())
}
