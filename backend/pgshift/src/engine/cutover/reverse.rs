//! Engine layer (cutover): the way back: a second migration from the new server to the old one,
//! armed while the source is frozen and the target drained, so both hold the same rows and its
//! tables start synced (no copy). Rolling back is then a cutover of that migration.

use sqlx::PgConnection;

use crate::engine::{source, target, ticker, EngineResult};
use crate::store::MigrationRecord;

/// The longest arming waits for one lock on either server: the old server's writes are blocked
/// meanwhile.
const ARM_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Installs capture for `reverse` on its source (the new server) and its bookkeeping on its
/// target (the old server) with every table synced as of the capture's first tick.
pub async fn arm(
    new_side: &mut PgConnection,
    old_side: &mut PgConnection,
    reverse: &MigrationRecord,
) -> EngineResult<()> {
    let schema = reverse.schema_name();
    // Armed while the old server is frozen: never wait long behind a lock on either side.
    source::install_within(new_side, reverse, ARM_LOCK_TIMEOUT).await?;
    let first = ticker::first_tick(new_side, &schema).await?;
    target::install_synced(old_side, reverse, &first, ARM_LOCK_TIMEOUT).await
}

/// Undoes a half-armed reverse migration (the cutover failed after arming it).
pub async fn disarm(
    new_side: &mut PgConnection,
    old_side: &mut PgConnection,
    reverse: &MigrationRecord,
) -> EngineResult<()> {
    let schema = reverse.schema_name();
    source::uninstall(new_side, &schema, None).await?;
    target::uninstall(old_side, &schema).await
}

/// Removes a cut-over migration's capture and freeze from its old source, once a cutover in the
/// other direction makes that server take writes again: its capture would otherwise queue every
/// write there with nobody to consume it. Returns whether anything was installed.
pub async fn retire_source(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    let installed = source::is_installed(conn, schema).await?;
    if installed {
        source::uninstall(conn, schema, None).await?;
    }
    Ok(installed)
}
