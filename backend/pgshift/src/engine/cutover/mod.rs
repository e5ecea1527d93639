//! The cutover and its companions, one file per step: preflight gates, the freeze of source
//! writes, the drain, sequences, verification (at cutover and on demand, with repair) and the
//! reverse migration that makes a rollback a second cutover. The service layer sequences the
//! steps and records them; everything here works on connections it is given.

pub mod compare;
pub mod drain;
pub mod freeze;
pub mod gates;
pub mod reverse;
pub mod sequences;
pub mod verify;

use sqlx::PgConnection;

use super::error::Context;
use super::EngineResult;

/// Session settings under which both sides render values the same way, so row text and
/// checksums compare across servers.
pub async fn comparable_session(conn: &mut PgConnection) -> EngineResult<()> {
    super::pg::run_script(
        conn,
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
         SET extra_float_digits = 3; SET bytea_output = 'hex'",
    )
    .await
    .context(|| "setting session options for comparison".into())
}
