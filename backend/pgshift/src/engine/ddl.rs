//! Engine layer: schema changes through pgshift (the DDL route), the idea of Londiste's `execute`
//! without superuser. The statements run on the source in one transaction that also records them
//! as an event ('S') carrying the migrated tables' new layout; the worker runs them on the target
//! exactly at that point of the stream, in the transaction of the batch that holds the event,
//! and goes on with the new column lists. A statement that fails on the source changes nothing;
//! one that fails on the target fails the batch, which is retried and reported until the target
//! lets it run: the migration never moves on as if it had worked.
//!
//! Why the event carries the layout: rows travel as positional record text, so each event must
//! be read with the column list in force when it was captured. Events of a changed table from
//! before the change have smaller ids than the change's own (their transactions held the table's
//! lock before the change could take it), and later ones larger: the boundary is exact.
//!
//! The target remembers the layout it applies by (`layout`, one row per table, written in the
//! same transaction as the batch), so a run that starts again after a crash reads events before
//! the change with the old column list even though the migration's record already has the new one.

mod source;
mod target;

pub use source::run_on_source;
pub(super) use target::{apply_on_target, layout};

use sqlx::PgConnection;

use super::error::Context;
use super::{quote_literal, EngineResult};

/// Runs `sql` (one or more statements) inside the caller's transaction, with `search_path` set
/// to the database's usual `"$user", public` so that unqualified names resolve as in psql, and
/// set back to pgshift's pinned `pg_catalog, pg_temp` afterwards. The statements run through
/// PL/pgSQL's EXECUTE: transaction control (COMMIT, ROLLBACK) is refused there, so they can
/// never end pgshift's transaction early.
async fn execute_statements(conn: &mut PgConnection, sql: &str, side: &str) -> EngineResult<()> {
    let body = format!("BEGIN EXECUTE {}; END", quote_literal(sql));
    sqlx::query("SELECT pg_catalog.set_config('search_path', '\"$user\", public', true)")
        .execute(&mut *conn)
        .await
        .context(|| "setting search_path for the schema change".into())?;
    let ran = super::pg::run_script(&mut *conn, &format!("DO {}", quote_literal(&body))).await;
    ran.map_err(|e| super::EngineError::Database {
        context: format!("running the schema change on the {side}"),
        source: e,
    })?;
    sqlx::query("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true)")
        .execute(&mut *conn)
        .await
        .context(|| "setting search_path back".into())?;
    Ok(())
}

/// The payload of a schema change's event: the statements, and every migrated table as it is
/// right after them on the source (positional row text is read with these column lists from the
/// event on).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SchemaChange {
    sql: String,
    tables: Vec<crate::store::TableSpec>,
}
