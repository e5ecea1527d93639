//! Engine layer (cutover): comparing source and target: row counts and order-independent checksums
//! per table and per primary-key range, over the columns both sides have now ([`TableShape`]),
//! and each row's key and md5 in a range, to name the keys that differ. The pieces the cutover's
//! incremental check reads with are in `since`, the repair of a range in `repair`. Every
//! statement runs in a comparable session ([`super::comparable_session`]), so both servers render
//! a value the same way; key values travel as that text and are typed again by each side's own
//! key column types, so keys compare as typed values.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};

use super::shape::{Side, TableShape};
use crate::engine::error::Context;
use crate::engine::EngineResult;

/// Count and checksum of some rows. The checksum is the sum of a 60-bit slice of each row's
/// md5, so it needs no ordering and no memory beyond the running sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Digest {
    pub rows: i64,
    pub checksum: Option<String>,
}

/// A primary-key bound: the key's values as text, in key order.
pub type KeyBound = Vec<String>;

/// The sum of a 60-bit slice of the md5 of `text`, over the rows.
pub(super) fn checksum(text: &str) -> String {
    format!("coalesce(sum(('x' || left(md5({text}), 15))::bit(60)::bigint), 0)::text")
}

fn digest_select(shape: &TableShape, side: Side, checksums: bool) -> String {
    let sum = if checksums {
        checksum(&shape.row_text())
    } else {
        "NULL::text".into()
    };
    format!("SELECT count(*), {sum} FROM {}", shape.from(side))
}

pub(super) fn tuple(items: Vec<String>) -> String {
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("({})", items.join(", "))
    }
}

/// `WHERE` clause for keys in (lo, hi]; `None` bounds are open. Parameters start at `$1`.
pub(super) fn range_clause(
    shape: &TableShape,
    side: Side,
    lo: Option<&KeyBound>,
    hi: Option<&KeyBound>,
) -> String {
    let types = shape.key_types(side);
    let cols = tuple(shape.key_columns());
    let mut n = 0;
    let mut params = || {
        tuple(
            types
                .iter()
                .map(|ty| {
                    n += 1;
                    format!("${n}::{ty}")
                })
                .collect(),
        )
    };
    let mut parts = vec!["true".to_string()];
    if lo.is_some() {
        parts.push(format!("{cols} > {}", params()));
    }
    if hi.is_some() {
        parts.push(format!("{cols} <= {}", params()));
    }
    parts.join(" AND ")
}

pub(super) fn bind_bounds<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    lo: Option<&'q KeyBound>,
    hi: Option<&'q KeyBound>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for v in lo.into_iter().chain(hi).flatten() {
        q = q.bind(v);
    }
    q
}

async fn digest(
    conn: &mut PgConnection,
    sql: &str,
    lo: Option<&KeyBound>,
    hi: Option<&KeyBound>,
    what: &str,
) -> EngineResult<Digest> {
    let row = bind_bounds(sqlx::query(sql), lo, hi)
        .fetch_one(conn)
        .await
        .context(|| format!("computing a checksum of {what}"))?;
    Ok(Digest {
        rows: row.get(0),
        checksum: row.get(1),
    })
}

/// Count (and checksum) of a whole table on one side.
pub async fn table_digest(
    conn: &mut PgConnection,
    shape: &TableShape,
    side: Side,
    checksums: bool,
) -> EngineResult<Digest> {
    let sql = digest_select(shape, side, checksums);
    digest(conn, &sql, None, None, &shape.name).await
}

/// Count and checksum of the keys in (lo, hi].
pub async fn range_digest(
    conn: &mut PgConnection,
    shape: &TableShape,
    side: Side,
    lo: Option<&KeyBound>,
    hi: Option<&KeyBound>,
) -> EngineResult<Digest> {
    let sql = format!(
        "{} WHERE {}",
        digest_select(shape, side, true),
        range_clause(shape, side, lo, hi)
    );
    digest(conn, &sql, lo, hi, &shape.name).await
}

pub(super) fn key_array(shape: &TableShape) -> String {
    let as_text: Vec<String> = shape
        .key_columns()
        .iter()
        .map(|k| format!("{k}::text"))
        .collect();
    format!("ARRAY[{}]", as_text.join(", "))
}

/// Every `every`-th key in key order: the upper bounds of ranges of about `every` rows (the last
/// range, above the last bound, is open). Read on the source.
pub async fn range_bounds(
    conn: &mut PgConnection,
    shape: &TableShape,
    every: i64,
) -> EngineResult<Vec<KeyBound>> {
    if shape.key.is_empty() {
        // No key, no ranges: the table is one range.
        return Ok(Vec::new());
    }
    let keys = shape.key_columns().join(", ");
    let sql = format!(
        "SELECT pgshift_key FROM (SELECT {}, row_number() OVER (ORDER BY {keys}) AS pgshift_rn FROM {}) s
          WHERE pgshift_rn % $1 = 0 ORDER BY pgshift_rn",
        format_args!("{} AS pgshift_key", key_array(shape)),
        shape.from(Side::Source)
    );
    sqlx::query_scalar(&sql)
        .bind(every)
        .fetch_all(conn)
        .await
        .context(|| format!("splitting {} into key ranges", shape.name))
}

/// The upper bound of the range of `every` rows after `lo` on the source: `None` when fewer rows
/// follow (the range is then open above). Walks the key index, so a range pass reads each key a
/// second time rather than sorting the table.
pub async fn next_bound(
    conn: &mut PgConnection,
    shape: &TableShape,
    lo: Option<&KeyBound>,
    every: i64,
) -> EngineResult<Option<KeyBound>> {
    if shape.key.is_empty() {
        // No key, no ranges: the table is one range.
        return Ok(None);
    }
    let n = shape.key.len();
    let sql = format!(
        "SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET ${} LIMIT 1",
        key_array(shape),
        shape.from(Side::Source),
        range_clause(shape, Side::Source, lo, None),
        shape.key_columns().join(", "),
        if lo.is_some() { n + 1 } else { 1 }
    );
    let row = bind_bounds(sqlx::query(&sql), lo, None)
        .bind(every - 1)
        .fetch_optional(conn)
        .await
        .context(|| format!("finding the next key range of {}", shape.name))?;
    Ok(row.map(|r| r.get(0)))
}

/// Each row's key (as text) and row md5 in (lo, hi], in key order: to name the keys that differ
/// in a range that does.
pub async fn range_rows(
    conn: &mut PgConnection,
    shape: &TableShape,
    side: Side,
    lo: Option<&KeyBound>,
    hi: Option<&KeyBound>,
) -> EngineResult<Vec<(KeyBound, String)>> {
    if shape.key.is_empty() {
        // Rows without a key cannot be named: callers compare digests instead.
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {}, md5({}) FROM {} WHERE {} ORDER BY {}",
        key_array(shape),
        shape.row_text(),
        shape.from(side),
        range_clause(shape, side, lo, hi),
        shape.key_columns().join(", ")
    );
    let rows = bind_bounds(sqlx::query(&sql), lo, hi)
        .fetch_all(conn)
        .await
        .context(|| format!("reading rows of {} on the {}", shape.name, side.words()))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The keys whose rows differ between two listings of [`range_rows`], at most `limit` of them.
pub fn differing_keys(
    src: &[(KeyBound, String)],
    dst: &[(KeyBound, String)],
    limit: usize,
) -> Vec<KeyBound> {
    let a: HashMap<&KeyBound, &String> = src.iter().map(|(k, h)| (k, h)).collect();
    let b: HashMap<&KeyBound, &String> = dst.iter().map(|(k, h)| (k, h)).collect();
    let mut keys: Vec<KeyBound> = a
        .iter()
        .filter(|(k, h)| b.get(*k) != Some(*h))
        .map(|(k, _)| (*k).clone())
        .chain(
            b.keys()
                .filter(|k| !a.contains_key(*k))
                .map(|k| (*k).clone()),
        )
        .collect();
    keys.sort();
    keys.dedup();
    keys.truncate(limit);
    keys
}

/// A key as people read it: `(1500)`, `(3, k3)`.
pub fn key_words(key: &KeyBound) -> String {
    format!("({})", key.join(", "))
}

/// A key range as shown to callers: `{"after": [...] | null, "up_to": [...] | null}`.
pub fn range_json(lo: Option<&KeyBound>, hi: Option<&KeyBound>) -> Value {
    serde_json::json!({ "after": lo, "up_to": hi })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: &[&str]) -> KeyBound {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn differing_keys_names_changed_and_one_sided_rows() {
        let src = vec![
            (key(&["1"]), "a".to_string()),
            (key(&["2"]), "b".to_string()),
            (key(&["3"]), "c".to_string()),
        ];
        let dst = vec![
            (key(&["1"]), "a".to_string()),
            (key(&["2"]), "x".to_string()),
            (key(&["4"]), "d".to_string()),
        ];
        assert_eq!(
            differing_keys(&src, &dst, 10),
            [key(&["2"]), key(&["3"]), key(&["4"])]
        );
        assert_eq!(differing_keys(&src, &dst, 1), [key(&["2"])]);
        assert_eq!(key_words(&key(&["3", "k3"])), "(3, k3)");
    }
}
