//! Engine layer, initial copy: chunks holding a row that COPY cannot carry. COPY's text format
//! doubles every backslash and writes a bytea in hex, so a row holding 540 MB of backslashes,
//! or a bytea over 512 MB, is more than the 1 GB one line may be, and the whole chunk's COPY
//! fails. Such a chunk is copied again in the same snapshot, halving its key range until the
//! rows that fail stand alone; each of those goes value by value (a bytea as its bytes, any
//! other value as the UTF-8 of its text form), and the target writes it from its values as
//! the worker writes a row captured in parts (apply/wide.rs). A value whose own text form is
//! over 1 GB cannot travel at all: the copy stops naming the row and the column.

use sqlx::PgConnection;

use super::stream;
use crate::engine::apply::wide;
use crate::engine::error::Context;
use crate::engine::{key_ops, quote_ident, row_format, EngineError, EngineResult};
use crate::store::TableSpec;

/// Whether a failure is a size limit: over 1 GB in one string ("out of memory", program limit
/// exceeded) or in one allocation (palloc's "invalid memory alloc request size", an internal
/// error).
pub(super) fn too_large(err: &EngineError) -> bool {
    matches!(err.sqlstate().as_deref(), Some("54000" | "53200" | "XX000"))
}

/// What copying one chunk row by row needs.
pub(super) struct Rows<'a> {
    pub schema: &'a str,
    pub table: &'a TableSpec,
    /// The table as the copy reads it (`ONLY` for an inheritance parent).
    pub from: &'a str,
    /// The chunk's range on the source, as a WHERE clause (empty for the whole table).
    pub where_chunk: &'a str,
    pub src_ops: &'a [key_ops::ColumnOps],
    /// Where the rows go on the target: the table, or the chunk's temporary table.
    pub into: &'a str,
    pub into_table: bool,
    /// The written columns, quoted, comma-separated.
    pub cols: &'a str,
}

/// Runs `sql` on both sides inside the caller's transactions.
async fn both(src: &mut PgConnection, dst: &mut PgConnection, sql: &str) -> EngineResult<()> {
    sqlx::query(sql)
        .execute(&mut *src)
        .await
        .context(|| format!("{sql} on the source"))?;
    sqlx::query(sql)
        .execute(&mut *dst)
        .await
        .context(|| format!("{sql} on the target"))?;
    Ok(())
}

/// Copies the chunk in key ranges, halving a range whose COPY is too large, inside the
/// caller's source snapshot and target transaction. Returns the rows copied.
pub(super) async fn copy(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    rows: &Rows<'_>,
) -> EngineResult<u64> {
    let t = rows.table;
    let keys: Vec<String> = t.key.iter().map(|k| quote_ident(k)).collect();
    let literal_keys: Vec<Vec<String>> = sqlx::query_scalar(&format!(
        "SELECT ARRAY[{}] FROM {} {} ORDER BY {}",
        keys.iter()
            .map(|k| format!("quote_literal({k}::text) || '::' || pg_typeof({k})::text"))
            .collect::<Vec<_>>()
            .join(", "),
        rows.from,
        rows.where_chunk,
        keys.join(", ")
    ))
    .fetch_all(&mut *src)
    .await
    .context(|| format!("listing the keys of a chunk of {}", t.display_name()))?;
    let mut copied = 0;
    // Ranges of `literal_keys` by index, [lo, hi): the first one is tried first.
    let mut todo = vec![(0, literal_keys.len())];
    while let Some((lo, hi)) = todo.pop() {
        if lo == hi {
            continue;
        }
        let mut conds = Vec::new();
        if lo > 0 {
            conds.push(key_ops::key_after(
                rows.src_ops,
                &keys,
                &literal_keys[lo - 1],
            ));
        }
        conds.push(key_ops::key_up_to(
            rows.src_ops,
            &keys,
            &literal_keys[hi - 1],
        ));
        let range = if rows.where_chunk.is_empty() {
            format!("WHERE {}", conds.join(" AND "))
        } else {
            format!("{} AND {}", rows.where_chunk, conds.join(" AND "))
        };
        both(src, dst, "SAVEPOINT pgshift_rows").await?;
        let streamed = stream(
            src,
            dst,
            &format!(
                "COPY (SELECT {} FROM {} {range}) TO STDOUT",
                rows.cols, rows.from
            ),
            &format!("COPY {} ({}) FROM STDIN", rows.into, rows.cols),
            &t.display_name(),
        )
        .await;
        match streamed {
            Ok(n) => {
                both(src, dst, "RELEASE SAVEPOINT pgshift_rows").await?;
                copied += n;
            }
            Err(err) if too_large(&err) => {
                both(src, dst, "ROLLBACK TO SAVEPOINT pgshift_rows").await?;
                if hi - lo == 1 {
                    copy_by_values(src, dst, rows, &literal_keys[lo]).await?;
                    copied += 1;
                } else {
                    let mid = lo + (hi - lo) / 2;
                    todo.push((mid, hi));
                    todo.push((lo, mid));
                }
            }
            Err(err) => return Err(err),
        }
    }
    Ok(copied)
}

/// Copies the row with key `key` (literals) value by value.
async fn copy_by_values(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    rows: &Rows<'_>,
    key: &[String],
) -> EngineResult<()> {
    let t = rows.table;
    let display = t.display_name();
    let described = format!("the row of {display} with key ({})", key.join(", "));
    // Which columns are a bytea underneath (domains resolved): those travel as their bytes.
    let raw: Vec<bool> = sqlx::query_scalar(
        "WITH RECURSIVE c AS (
             SELECT a.attnum, a.atttypid FROM pg_attribute a
              WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped),
         base AS (
             SELECT c.attnum, c.atttypid AS type FROM c
             UNION ALL
             SELECT b.attnum, t.typbasetype FROM base b JOIN pg_type t ON t.oid = b.type WHERE t.typtype = 'd')
         SELECT EXISTS (SELECT 1 FROM base b WHERE b.attnum = c.attnum AND b.type = 'bytea'::regtype)
           FROM c ORDER BY c.attnum",
    )
    .bind(t.sql_name())
    .fetch_all(&mut *src)
    .await
    .context(|| format!("reading the column types of {display}"))?;
    let key_columns: Vec<String> = t
        .key
        .iter()
        .map(|k| format!("x.{}", quote_ident(k)))
        .collect();
    let row_matches = key_ops::key_equal(rows.src_ops, &key_columns, key);
    wide::prepare(dst).await?;
    // The copy's own session: one row at a time, under one tag.
    const TAG: i64 = 0;
    let mut written = Vec::new();
    for (i, column) in t.columns.iter().enumerate() {
        if column.generated {
            continue;
        }
        written.push(i);
        let c = quote_ident(&column.name);
        let value = if raw.get(i).copied().unwrap_or(false) {
            format!("x.{c}::pg_catalog.bytea")
        } else {
            format!("pg_catalog.convert_to(x.{c}::pg_catalog.text, 'UTF8')")
        };
        sqlx::query("SAVEPOINT pgshift_value")
            .execute(&mut *src)
            .await
            .context(|| "opening a savepoint on the source".into())?;
        let read: Result<Option<Vec<u8>>, _> = sqlx::query_scalar(&format!(
            "SELECT {value} FROM {} x WHERE {row_matches}",
            rows.from
        ))
        .fetch_one(&mut *src)
        .await;
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(err) => {
                return Err(EngineError::invalid(
                    "row_cannot_travel",
                    format!(
                        "{described}: the text form of column {} cannot be built ({err}); pgshift cannot copy this row: change the value on the source, then resync the table",
                        column.name
                    ),
                ))
            }
        };
        sqlx::query("RELEASE SAVEPOINT pgshift_value")
            .execute(&mut *src)
            .await
            .context(|| "closing a savepoint on the source".into())?;
        if let Some(bytes) = bytes {
            wide::stage_value(dst, TAG, i, &bytes).await?;
        }
    }
    let row = wide::assembled_row(
        dst,
        &row_format::row_type(rows.schema, t),
        &written,
        &display,
    )
    .await?;
    let values = written
        .iter()
        .map(|&i| format!("r.{}", row_format::field(i)))
        .collect::<Vec<_>>()
        .join(", ");
    let overriding = if rows.into_table && t.columns.iter().any(|c| c.identity_always) {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    sqlx::query(&format!(
        "INSERT INTO {} ({}){overriding} SELECT {values} FROM ({row}) AS r",
        rows.into, rows.cols
    ))
    .bind(TAG)
    .execute(&mut *dst)
    .await
    .context(|| format!("copying {described} value by value"))?;
    wide::forget(dst, TAG).await
}
