//! The way back: a second migration from the new server to the old one, armed while the source is
//! frozen and the target drained, so both hold the same rows and its tables start synced (no
//! copy). Rolling back is then a cutover of that migration.

use sqlx::{Connection, PgConnection};

use crate::engine::error::Context;
use crate::engine::{pg, quote_ident, source, EngineResult};
use crate::store::MigrationRecord;

const TARGET_INSTALL_SQL: &str = include_str!("../../../../../sql/target/install.sql");

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
    let (tick_id, snapshot, tick_time, event_seq): (i64, String, chrono::DateTime<chrono::Utc>, i64) =
        sqlx::query_as(&format!(
            "SELECT tick_id, tick_snapshot::text, tick_time, tick_event_seq FROM {}.tick ORDER BY tick_id LIMIT 1",
            quote_ident(&schema)
        ))
        .fetch_one(&mut *new_side)
        .await
        .context(|| "reading the reverse migration's first tick".into())?;
    let quoted = quote_ident(&schema);
    let mut tx = old_side
        .begin()
        .await
        .context(|| "opening the reverse install on the old server".into())?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        ARM_LOCK_TIMEOUT.as_millis()
    ))
    .execute(&mut *tx)
    .await
    .context(|| "setting lock_timeout".into())?;
    pg::run_script(&mut tx, &TARGET_INSTALL_SQL.replace("@schema@", &quoted))
        .await
        .context(|| "installing the reverse migration's bookkeeping on the old server".into())?;
    for t in &reverse.tables {
        sqlx::query(&format!(
            "INSERT INTO {quoted}.table_state (table_no, table_name, state, copy_finished_at) VALUES ($1, $2, 'synced', clock_timestamp())"
        ))
        .bind(t.no)
        .bind(t.display_name())
        .execute(&mut *tx)
        .await
        .context(|| "recording the reverse migration's table states".into())?;
    }
    sqlx::query(&format!(
        "INSERT INTO {quoted}.applied (tick_id, tick_snapshot, tick_time, tick_event_seq) VALUES ($1, $2, $3, $4)"
    ))
    .bind(tick_id)
    .bind(snapshot)
    .bind(tick_time)
    .bind(event_seq)
    .execute(&mut *tx)
    .await
    .context(|| "recording the reverse migration's first tick".into())?;
    tx.commit()
        .await
        .context(|| "committing the reverse install on the old server".into())
}

/// Undoes a half-armed reverse migration (the cutover failed after arming it).
pub async fn disarm(
    new_side: &mut PgConnection,
    old_side: &mut PgConnection,
    reverse: &MigrationRecord,
) -> EngineResult<()> {
    let schema = reverse.schema_name();
    source::uninstall(new_side, &schema, None).await?;
    crate::engine::target::uninstall(old_side, &schema).await
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
