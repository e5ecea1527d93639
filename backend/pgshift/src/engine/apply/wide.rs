//! Engine layer, apply: rows sent in parts. A row whose text form the source could not build
//! (over 1 GB: record output doubles quotes and backslashes) arrives as one 'P' event per piece
//! of each value (capture_row in sql/source/install.sql) and a 'W' event once all are sent. The
//! pieces wait in a temporary table of the batch's transaction; the row is then written from
//! them column by column on the target, each value through its type's input (a bytea from its
//! bytes), so no message and no text ever holds the whole row.

use sqlx::PgConnection;

use super::TablePlan;
use crate::engine::error::Context;
use crate::engine::{EngineError, EngineResult};

/// Where [`TablePlan::assemble`] reads the row from: replaced by the assembled row's query.
pub(super) const ROW: &str = "@row@";

const PARTS: &str = "pg_temp.pgshift_parts";

/// Creates the pieces' table of this session if it is missing. Rows go at commit (or with a
/// rolled-back batch).
pub(in crate::engine) async fn prepare(conn: &mut PgConnection) -> EngineResult<()> {
    let present: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(PARTS)
        .fetch_one(&mut *conn)
        .await
        .context(|| "looking for the table of row pieces".into())?;
    if !present {
        sqlx::query(
            "CREATE TEMP TABLE pgshift_parts (tag bigint NOT NULL, col integer NOT NULL,
                                              piece integer NOT NULL, bytes bytea NOT NULL)
             ON COMMIT DELETE ROWS",
        )
        .execute(&mut *conn)
        .await
        .context(|| "creating the table of row pieces on the target".into())?;
    }
    Ok(())
}

fn corrupt(plan: &TablePlan, what: &str) -> EngineError {
    EngineError::invalid(
        "corrupt_event",
        format!("an unreadable piece of a row of {}: {what}", plan.display),
    )
}

/// Keeps one piece ("<tag> <column> <piece> <t|b>", a newline, base64) until its row is written.
pub(super) async fn stage(
    conn: &mut PgConnection,
    plan: &TablePlan,
    data: &str,
) -> EngineResult<()> {
    let (header, body) = data
        .split_once('\n')
        .ok_or_else(|| corrupt(plan, "no header"))?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [tag, col, piece, _kind] = fields[..] else {
        return Err(corrupt(plan, header));
    };
    let number = |s: &str| s.parse::<i64>().map_err(|_| corrupt(plan, header));
    sqlx::query(&format!(
        "INSERT INTO {PARTS} (tag, col, piece, bytes) VALUES ($1, $2, $3, pg_catalog.decode($4, 'base64'))"
    ))
    .bind(number(tag)?)
    .bind(number(col)? as i32)
    .bind(number(piece)? as i32)
    .bind(body)
    .execute(&mut *conn)
    .await
    .context(|| format!("keeping a piece of a row of {}", plan.display))?;
    Ok(())
}

/// Writes the row whose pieces carry `tag`, then forgets them.
pub(super) async fn write(
    conn: &mut PgConnection,
    plan: &TablePlan,
    tag: &str,
) -> EngineResult<()> {
    let tag: i64 = tag.trim().parse().map_err(|_| corrupt(plan, tag))?;
    let row = assembled_row(conn, &plan.row_type, &plan.assembled_columns, &plan.display).await?;
    for sql in &plan.assemble {
        sqlx::query(&sql.replace(ROW, &row))
            .bind(tag)
            .execute(&mut *conn)
            .await
            .context(|| format!("writing a row of {} sent in parts", plan.display))?;
    }
    forget(conn, tag).await
}

/// Keeps one whole value (its bytes, or the UTF-8 of its text form) as column `col` of the row
/// `tag`, for [`assembled_row`]. The copy's way in, for a row that COPY cannot carry.
pub(in crate::engine) async fn stage_value(
    conn: &mut PgConnection,
    tag: i64,
    col: usize,
    bytes: &[u8],
) -> EngineResult<()> {
    sqlx::query(&format!(
        "INSERT INTO {PARTS} (tag, col, piece, bytes) VALUES ($1, $2, 0, $3)"
    ))
    .bind(tag)
    .bind(col as i32)
    .bind(bytes)
    .execute(&mut *conn)
    .await
    .context(|| "keeping a value of a row that travels in parts".into())?;
    Ok(())
}

/// Forgets the pieces of row `tag`.
pub(in crate::engine) async fn forget(conn: &mut PgConnection, tag: i64) -> EngineResult<()> {
    sqlx::query(&format!("DELETE FROM {PARTS} WHERE tag = $1"))
        .bind(tag)
        .execute(&mut *conn)
        .await
        .context(|| "forgetting the pieces of a written row".into())?;
    Ok(())
}

/// `SELECT <value> AS c<i>, …` over `columns` (positions in the row type `row_type`): the row
/// whose pieces carry the tag bound as `$1`, each value through its column type's input (a
/// bytea from its bytes). No piece: NULL.
pub(in crate::engine) async fn assembled_row(
    conn: &mut PgConnection,
    row_type: &str,
    columns: &[usize],
    display: &str,
) -> EngineResult<String> {
    // The row type's fields (the target's column types, domains resolved one level) and
    // whether each is a bytea underneath: those pieces are the value's bytes, the others the
    // UTF-8 of its text form.
    let fields: Vec<(String, bool)> = sqlx::query_as(
        "WITH RECURSIVE f AS (
             SELECT a.attnum, format_type(a.atttypid, a.atttypmod) AS type_name, a.atttypid
               FROM pg_attribute a
              WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE oid = $1::regtype)
                AND a.attnum > 0 AND NOT a.attisdropped),
         base AS (
             SELECT f.attnum, f.atttypid AS type FROM f
             UNION ALL
             SELECT b.attnum, t.typbasetype FROM base b JOIN pg_type t ON t.oid = b.type WHERE t.typtype = 'd')
         SELECT f.type_name,
                EXISTS (SELECT 1 FROM base b WHERE b.attnum = f.attnum AND b.type = 'bytea'::regtype)
           FROM f ORDER BY f.attnum",
    )
    .bind(row_type)
    .fetch_all(&mut *conn)
    .await
    .context(|| format!("reading the row type of {display}"))?;
    let values = columns
        .iter()
        .map(|&i| {
            let (type_name, raw) = fields.get(i).ok_or_else(|| {
                EngineError::invalid(
                    "target_columns_differ",
                    format!("the row type of {display} lacks column {i}"),
                )
            })?;
            let bytes = format!(
                "(SELECT pg_catalog.string_agg(p.bytes, ''::pg_catalog.bytea ORDER BY p.piece)
                    FROM {PARTS} p WHERE p.tag = $1 AND p.col = {i})"
            );
            let value = if *raw {
                bytes
            } else {
                format!("pg_catalog.convert_from({bytes}, 'UTF8')")
            };
            Ok(format!(
                "({value})::{type_name} AS {}",
                crate::engine::row_format::field(i)
            ))
        })
        .collect::<EngineResult<Vec<_>>>()?;
    Ok(format!("SELECT {}", values.join(", ")))
}
