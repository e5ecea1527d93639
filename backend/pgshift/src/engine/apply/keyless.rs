//! Engine layer: applying the events of a table without a key, with whole-row identity (what
//! `REPLICA IDENTITY FULL` does for native replication): an insert adds one row, a delete
//! removes exactly one target row equal to the old row in every written column (so duplicates
//! stay duplicates), an update is both.
//!
//! A batch's events of such a table are not applied one by one: they are staged in a temporary
//! table and applied at the end of the batch as their net effect, the table seen as a multiset
//! of rows (each distinct row: +1 per insert, −1 per delete). Adding and removing rows commute,
//! so the net effect is exact whatever order the source's AFTER triggers fired in (a trigger's
//! nested update of the same row is captured before the statement that fired it); and because
//! every removal was possible on the source at its own moment, the net removal of a row never
//! exceeds the copies the target holds — unless the target differs, which is then said.
//!
//! Rows are compared as the text of their written columns rendered in the target's session (the
//! event's text read through the row type first): equal values written differently (1.0, 1.00)
//! are different rows, as on the source. NOT NULL columns whose type has an ordinary equality
//! are also compared with it, which lets the target use an index on them.
//!
//! While the table is still being copied its events are held on the target instead, with their
//! source transaction (`held_<no>`), and the copy replays those its snapshot did not see
//! (copy.rs): without a key nothing else could tell a copied row from a changed one.

use sqlx::PgConnection;

use super::{Op, TablePlan};
use crate::engine::error::Context;
use crate::engine::{quote_ident, row_format, EngineError, EngineResult};
use crate::store::TableSpec;

const STAGE: &str = "pg_temp.pgshift_keyless_stage";

/// The statements of one table without a key.
#[derive(Debug, Clone)]
pub(in crate::engine) struct KeylessSql {
    /// Removes the rows the staged events remove on balance; returns one row per removal
    /// expected with whether it found its row.
    remove: String,
    /// Adds the rows the staged events add on balance.
    add: String,
    /// Keeps events aside while the table copies: $1 txids, $2 ops, $3 texts.
    hold: String,
    /// Whether the table is still being copied, read under a row lock that the copy's landing
    /// waits for: $1 the table.
    still_copying: String,
}

/// The name of the table holding a keyless table's events while it copies.
pub(in crate::engine) fn held_table(schema: &str, table: &TableSpec) -> String {
    format!(
        "{}.{}",
        quote_ident(schema),
        quote_ident(&format!("held_{}", table.no))
    )
}

/// Creates the held events' table of a table without a key, if missing.
pub(in crate::engine) async fn prepare_held(
    conn: &mut PgConnection,
    schema: &str,
    table: &TableSpec,
) -> EngineResult<()> {
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {} (
             ord bigserial PRIMARY KEY, txid bigint NOT NULL, op \"char\" NOT NULL, data text NOT NULL)",
        held_table(schema, table)
    ))
    .execute(&mut *conn)
    .await
    .context(|| {
        format!(
            "creating the held events' table of {}",
            table.display_name()
        )
    })?;
    Ok(())
}

impl KeylessSql {
    /// `matchable` are the written columns that are NOT NULL on the target with an ordinary
    /// equality there (see the module's notes).
    pub(in crate::engine) fn new(
        schema: &str,
        table: &TableSpec,
        matchable: &[String],
        own_rows: &str,
    ) -> Self {
        let row_type = row_format::row_type(schema, table);
        let writable: Vec<&str> = table.writable_columns().map(|c| c.name.as_str()).collect();
        let field = |c: &str| format!("(s.r).{}", row_format::field_of(table, c));
        let canon_staged = format!(
            "ROW({})::text",
            writable
                .iter()
                .map(|c| field(c))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let canon_target = format!(
            "ROW({})::text",
            writable
                .iter()
                .map(|c| format!("t.{}", quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Net effect per distinct row; `r` is one of the equal rows (any: they are the same).
        let net = format!(
            "WITH s AS (SELECT x.op, x.data::{row_type} AS r FROM {STAGE} x WHERE x.table_no = $1),
                  net AS (SELECT {canon_staged} AS canon,
                                 sum(CASE s.op WHEN 'U' THEN 1 ELSE -1 END) AS n,
                                 (array_agg(s.r))[1] AS r
                            FROM s GROUP BY 1)"
        );
        let mut same = vec![format!("{canon_target} = net.canon")];
        for c in matchable {
            same.push(format!(
                "t.{} = (net.r).{}",
                quote_ident(c),
                row_format::field_of(table, c)
            ));
        }
        let remove = format!(
            "{net},
                  found AS (SELECT t.tableoid AS rel, t.ctid AS tid, net.canon,
                                   row_number() OVER (PARTITION BY net.canon) AS copy_no
                              FROM {own_rows} t JOIN net ON {same}
                             WHERE net.n < 0),
                  wanted AS (SELECT net.canon, g AS copy_no FROM net, generate_series(1, -net.n) g
                              WHERE net.n < 0),
                  gone AS (DELETE FROM {own_rows} t USING found f, wanted w
                            WHERE f.canon = w.canon AND f.copy_no = w.copy_no
                              AND t.tableoid = f.rel AND t.ctid = f.tid
                        RETURNING f.canon, f.copy_no)
             SELECT count(*) FILTER (WHERE g.canon IS NULL)::bigint, min(w.canon)
               FROM wanted w LEFT JOIN gone g ON g.canon = w.canon AND g.copy_no = w.copy_no
              WHERE g.canon IS NULL",
            same = same.join(" AND "),
        );
        let cols = writable
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let values = writable
            .iter()
            .map(|c| format!("(net.r).{}", row_format::field_of(table, c)))
            .collect::<Vec<_>>()
            .join(", ");
        let overriding = if table.columns.iter().any(|c| c.identity_always) {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        };
        let add = format!(
            "{net}
             INSERT INTO {t} ({cols}){overriding}
             SELECT {values} FROM net, generate_series(1, net.n) WHERE net.n > 0",
            t = table.sql_name(),
        );
        let hold = format!(
            "INSERT INTO {} (txid, op, data)
             SELECT x.txid, x.op, x.data FROM unnest($1::bigint[], $2::\"char\"[], $3::text[]) AS x(txid, op, data)",
            held_table(schema, table)
        );
        let still_copying = format!(
            "SELECT state IN ('pending', 'copying') FROM {}.table_state WHERE table_no = $1 FOR SHARE",
            quote_ident(schema)
        );
        Self {
            remove,
            add,
            hold,
            still_copying,
        }
    }
}

/// Creates this session's staging table if it is missing. Rows go at commit.
async fn prepare(conn: &mut PgConnection) -> EngineResult<()> {
    let present: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(STAGE)
        .fetch_one(&mut *conn)
        .await
        .context(|| "looking for the staging table of keyless rows".into())?;
    if !present {
        sqlx::query(
            "CREATE TEMP TABLE pgshift_keyless_stage (table_no integer NOT NULL, op \"char\" NOT NULL, data text NOT NULL)
             ON COMMIT DELETE ROWS",
        )
        .execute(&mut *conn)
        .await
        .context(|| "creating the staging table of keyless rows".into())?;
    }
    Ok(())
}

/// Whether the table's events must be held (its copy has not landed). Takes a row lock on the
/// table's state until the caller's transaction ends, so the copy cannot land in between.
pub(super) async fn still_copying(conn: &mut PgConnection, plan: &TablePlan) -> EngineResult<bool> {
    let sql = &plan.keyless_sql().still_copying;
    sqlx::query_scalar(sql)
        .bind(plan.no)
        .fetch_one(&mut *conn)
        .await
        .context(|| format!("reading the copy state of {}", plan.display))
}

/// Holds events of a table whose copy has not landed (see the module's notes).
pub(super) async fn hold(
    conn: &mut PgConnection,
    plan: &TablePlan,
    events: &[&super::Event],
) -> EngineResult<()> {
    let txids: Vec<i64> = events.iter().map(|e| e.txid).collect();
    let ops: Vec<String> = events.iter().map(|e| op_letter(e.op).to_string()).collect();
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    sqlx::query(&plan.keyless_sql().hold)
        .bind(&txids)
        .bind(&ops)
        .bind(&data)
        .execute(&mut *conn)
        .await
        .context(|| format!("holding events of {} while it copies", plan.display))?;
    Ok(())
}

/// The letter an event's operation travels under in the queue.
pub(in crate::engine) fn op_letter(op: Op) -> char {
    match op {
        Op::Upsert => 'U',
        Op::Delete => 'D',
        Op::KeyChange => 'K',
        Op::Truncate => 'T',
        Op::Appeared => 'A',
        Op::Piece => 'P',
        Op::Assemble => 'W',
        Op::Unsendable => 'E',
        Op::SchemaChange => 'S',
    }
}

/// Stages inserted (`Op::Upsert`) or removed (`Op::Delete`) rows for the end of the batch.
pub(super) async fn stage(
    conn: &mut PgConnection,
    plan: &TablePlan,
    op: Op,
    data: &[&str],
) -> EngineResult<()> {
    prepare(conn).await?;
    sqlx::query(&format!(
        "INSERT INTO {STAGE} (table_no, op, data) SELECT $1, $2::\"char\", unnest($3::text[])"
    ))
    .bind(plan.no)
    .bind(op_letter(op).to_string())
    .bind(data)
    .execute(&mut *conn)
    .await
    .context(|| format!("staging {} row(s) of {}", data.len(), plan.display))?;
    Ok(())
}

/// Applies the net effect of the rows staged for `plan`'s table, and forgets them.
pub(super) async fn flush(conn: &mut PgConnection, plan: &TablePlan) -> EngineResult<()> {
    prepare(conn).await?;
    let sql = plan.keyless_sql();
    let (missing, example): (i64, Option<String>) = sqlx::query_as(&sql.remove)
        .bind(plan.no)
        .fetch_one(&mut *conn)
        .await
        .context(|| format!("removing rows of {}", plan.display))?;
    if missing > 0 {
        // The source removed rows the target does not hold: the target already differs, and
        // going on would hide it.
        return Err(EngineError::invalid(
            "target_differs",
            format!(
                "{} row(s) of {} removed on the source are not on the target (one of them: {}); the target differs from the source: resync the table",
                missing,
                plan.display,
                example.unwrap_or_default()
            ),
        ));
    }
    sqlx::query(&sql.add)
        .bind(plan.no)
        .execute(&mut *conn)
        .await
        .context(|| format!("adding rows of {}", plan.display))?;
    sqlx::query(&format!("DELETE FROM {STAGE} WHERE table_no = $1"))
        .bind(plan.no)
        .execute(&mut *conn)
        .await
        .context(|| "emptying the staging table".into())?;
    Ok(())
}

/// The tables with rows staged in this transaction.
pub(super) async fn staged_tables(conn: &mut PgConnection) -> EngineResult<Vec<i32>> {
    let present: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(STAGE)
        .fetch_one(&mut *conn)
        .await
        .context(|| "looking for the staging table of keyless rows".into())?;
    if !present {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(&format!("SELECT DISTINCT table_no FROM {STAGE} ORDER BY 1"))
        .fetch_all(&mut *conn)
        .await
        .context(|| "reading the staged tables".into())
}
