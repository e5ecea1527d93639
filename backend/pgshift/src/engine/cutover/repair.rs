//! Engine layer (cutover): repair: rewriting one primary-key range of a table on the target from
//! the source, exactly (COPY's text format), without ever deleting a row the source still has.
//! The caller holds the table still on the source and has drained the target.

use sqlx::PgConnection;
use sqlx::Row;

use super::shape::{Side, TableShape};
use super::since::rows_of;
use super::verify::{bind_bounds, key_array, range_clause, tuple, KeyBound};
use crate::engine::error::Context;
use crate::engine::{quote_ident, EngineResult};

/// Makes the target's rows in (lo, hi] the source's, over the columns both sides have; returns
/// the rows written. The caller holds the source table still (brief lock) and has drained the
/// target, so the range is exact; `dst` is a target transaction with
/// `session_replication_role = replica`.
///
/// Rows travel by COPY's text format, as the initial copy's do (every value of every type
/// arrives exactly). Nothing is deleted for being in the range alone: the target's rows with
/// the source rows' keys are replaced, and a target row the source did not send is deleted only
/// once the source is found to hold no row with that key anywhere. Two servers can order the
/// same keys differently (a collation library upgraded on one side), and a range then names
/// other rows on each side: a repair must never delete a row the source still has.
pub async fn copy_range(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    shape: &TableShape,
    lo: Option<&KeyBound>,
    hi: Option<&KeyBound>,
) -> EngineResult<u64> {
    let table = shape.sql_name();
    let cols: Vec<String> = shape
        .writable_columns()
        .map(|c| quote_ident(&c.name))
        .collect();
    if shape.key.is_empty() {
        return copy_whole(src, dst, shape, &cols).await;
    }
    let keys: Vec<String> = shape.key.iter().map(|k| quote_ident(k)).collect();
    let same_key = |a: &str, b: &str| {
        keys.iter()
            .map(|k| format!("{a}.{k} = {b}.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    super::super::pg::run_script(
        &mut *dst,
        &format!(
            "CREATE TEMP TABLE IF NOT EXISTS pgshift_repair (LIKE {table}) ON COMMIT DROP;
             TRUNCATE pgshift_repair;"
        ),
    )
    .await
    .context(|| format!("preparing the repair of {}", shape.name))?;
    // COPY takes no parameters: the bounds go in as literals quoted here and typed by the
    // source's own key column types.
    let select: Vec<String> = cols.iter().map(|c| format!("t.{c}")).collect();
    let copy_out = format!(
        "COPY (SELECT {} FROM {} WHERE {}) TO STDOUT",
        select.join(", "),
        shape.from(Side::Source),
        range_literals(shape, Side::Source, lo, hi)
    );
    let copy_in = format!("COPY pgshift_repair ({}) FROM STDIN", cols.join(", "));
    let sent = crate::engine::copy::stream(src, dst, &copy_out, &copy_in, &shape.name).await?;
    let overriding = if shape.columns.iter().any(|c| c.identity_always) {
        "OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    super::super::pg::run_script(
        &mut *dst,
        &format!(
            "DELETE FROM {table} AS t USING pgshift_repair r WHERE {};
             INSERT INTO {table} ({cols}) {overriding} SELECT {cols} FROM pgshift_repair;",
            same_key("t", "r"),
            cols = cols.join(", ")
        ),
    )
    .await
    .context(|| format!("writing a key range of {} on the target", shape.name))?;
    // The target's other rows in the range: extra only if the source has no such key at all.
    let candidates = format!(
        "SELECT coalesce(jsonb_agg(to_jsonb({})), '[]')::text FROM {} WHERE {} AND NOT EXISTS (SELECT 1 FROM pgshift_repair r WHERE {})",
        key_array(shape),
        shape.from(Side::Target),
        range_clause(shape, Side::Target, lo, hi),
        same_key("t", "r")
    );
    let candidates: String = bind_bounds(sqlx::query(&candidates), lo, hi)
        .fetch_one(&mut *dst)
        .await
        .context(|| format!("reading the target's rows of a key range of {}", shape.name))?
        .get(0);
    let candidates: Vec<KeyBound> = serde_json::from_str(&candidates).map_err(|e| {
        crate::engine::EngineError::invalid(
            "unreadable_keys",
            format!("unreadable keys of {}: {e}", shape.name),
        )
    })?;
    let on_source = rows_of(src, shape, Side::Source, &candidates).await?;
    let extra: Vec<&KeyBound> = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| !on_source.contains_key(&(*i as i64 + 1)))
        .map(|(_, k)| k)
        .collect();
    if !extra.is_empty() {
        let types = shape.key_types(Side::Target);
        let matches: Vec<String> = shape
            .key_columns()
            .iter()
            .zip(&types)
            .enumerate()
            .map(|(i, (col, ty))| format!("{col} = (k.v ->> {i})::{ty}"))
            .collect();
        sqlx::query(&format!(
            "DELETE FROM {} USING jsonb_array_elements($1::jsonb) AS k(v) WHERE {}",
            shape.from(Side::Target),
            matches.join(" AND ")
        ))
        .bind(serde_json::to_string(&extra).unwrap_or_else(|_| "[]".into()))
        .execute(&mut *dst)
        .await
        .context(|| format!("deleting extra rows of {} on the target", shape.name))?;
    }
    Ok(sent)
}

/// [`range_clause`] with the bounds written in as literals.
fn range_literals(
    shape: &TableShape,
    side: Side,
    lo: Option<&KeyBound>,
    hi: Option<&KeyBound>,
) -> String {
    let types = shape.key_types(side);
    let cols = tuple(shape.key_columns());
    let bound = |values: &KeyBound| {
        tuple(
            values
                .iter()
                .zip(&types)
                .map(|(v, ty)| format!("{}::{ty}", crate::engine::quote_literal(v)))
                .collect(),
        )
    };
    let mut parts = vec!["true".to_string()];
    if let Some(lo) = lo {
        parts.push(format!("{cols} > {}", bound(lo)));
    }
    if let Some(hi) = hi {
        parts.push(format!("{cols} <= {}", bound(hi)));
    }
    parts.join(" AND ")
}

/// The repair of a table without a key: its one range is the whole table, and rows cannot be
/// told apart but by value, so the target's rows are replaced by the source's (the caller holds
/// the table still on the source and the target has caught up).
async fn copy_whole(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    shape: &TableShape,
    cols: &[String],
) -> EngineResult<u64> {
    let cols = cols.join(", ");
    let own_rows = shape.from(Side::Target);
    sqlx::query(&format!("DELETE FROM {own_rows}"))
        .execute(&mut *dst)
        .await
        .context(|| format!("emptying {} on the target for its repair", shape.name))?;
    let copy_out = format!(
        "COPY (SELECT {cols} FROM {}) TO STDOUT",
        shape.from(Side::Source)
    );
    let copy_in = format!("COPY {} ({cols}) FROM STDIN", shape.sql_name());
    crate::engine::copy::stream(src, dst, &copy_out, &copy_in, &shape.name).await
}
