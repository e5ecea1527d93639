//! The cutover and its companions, one file per step: preflight gates, the freeze of source
//! writes, the drain, sequences, verification (at cutover and on demand, with repair) and the
//! reverse migration that makes a rollback a second cutover. The service layer sequences the
//! steps and records them; everything here works on connections it is given.

pub mod compare;
pub mod content;
pub mod drain;
pub mod foreign_keys;
pub mod freeze;
pub mod gates;
pub mod reverse;
pub mod sequences;
pub mod shape;
pub mod verify;

use sqlx::PgConnection;

use super::error::Context;
use super::EngineResult;

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
