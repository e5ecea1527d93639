//! Engine layer (cutover): comparing source and target: row counts and order-independent checksums
//! per table and per primary-key range, over the columns both sides have now ([`TableShape`]), and
//! the pieces the cutover's incremental check is made of (the rows written since a transaction id,
//! the checksum of the key set, the rows of given keys). Every statement runs in a comparable
//! session ([`super::comparable_session`]), so both servers render a value the same way; key values
//! travel as that text and are typed again by each side's own key column types, so keys compare as
//! typed values.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};

use super::shape::{Side, TableShape};
use crate::engine::error::Context;
use crate::engine::{quote_ident, EngineResult};

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
fn checksum(text: &str) -> String {
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

fn tuple(items: Vec<String>) -> String {
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("({})", items.join(", "))
    }
}

/// `WHERE` clause for keys in (lo, hi]; `None` bounds are open. Parameters start at `$1`.
fn range_clause(
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

fn bind_bounds<'q>(
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

fn key_array(shape: &TableShape) -> String {
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

/// How [`scan_since`] sums up a key set. md5 is the same everywhere but costs about as much as
/// the rest of the pass together; PostgreSQL's own `hashtextextended` is four times cheaper, and
/// the same on both servers unless their builds differ (byte order), which [`key_hash`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHash {
    Native,
    Md5,
}

/// Texts whose hashes both servers must agree on before [`KeyHash::Native`] is used.
const HASH_PROBES: [&str; 5] = [
    "",
    "pgshift",
    "(1,abc)",
    "2026-12-01 00:00:00+00",
    "ünïcödé ✓ 🐘",
];

/// [`KeyHash::Native`] when both servers hash the probes alike (bytes, collation "C"), else md5.
pub async fn key_hash(src: &mut PgConnection, dst: &mut PgConnection) -> KeyHash {
    let (a, b) = tokio::join!(probe_hashes(src), probe_hashes(dst));
    match (a, b) {
        (Some(a), Some(b)) if a == b => KeyHash::Native,
        _ => KeyHash::Md5,
    }
}

async fn probe_hashes(conn: &mut PgConnection) -> Option<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT array_agg(hashtextextended(p COLLATE \"C\", 0) ORDER BY n)
           FROM unnest($1::text[]) WITH ORDINALITY AS u(p, n)",
    )
    .bind(HASH_PROBES.as_slice())
    .fetch_one(conn)
    .await
    .ok()
}

fn key_checksum(shape: &TableShape, hash: KeyHash) -> String {
    match hash {
        KeyHash::Md5 => checksum(&shape.key_text()),
        KeyHash::Native => {
            // Each key column hashed with its own seed, combined with xor: cheaper than the
            // key's record text, and a value cannot shift from one column into the next.
            let parts: Vec<String> = shape
                .key_columns()
                .iter()
                .enumerate()
                .map(|(i, k)| format!("hashtextextended({k}::text COLLATE \"C\", {i})"))
                .collect();
            format!("coalesce(sum({}), 0)::text", parts.join(" # "))
        }
    }
}

/// What one side holds now, read in one pass: its row count, a checksum of its key set (which,
/// with the counts, shows a row deleted on one side only), and the keys of the rows written by
/// any transaction from `since` on (the rows that may have changed after they were compared).
#[derive(Debug, Clone)]
pub struct Scan {
    pub rows: i64,
    pub keys_checksum: String,
    pub written: Vec<KeyBound>,
}

/// Reads [`Scan`] on one side. `since` is a 64-bit transaction id from `txid_current_snapshot()`;
/// a row version's `xmin` is 32 bits, compared through `age()` (its distance back from now), so
/// a row counts as written since `since` exactly when its `xmin` is not older than `since`.
/// Every row version that was not visible to a snapshot taken with that `xmin` has such an
/// `xmin`, whichever session wrote it and whether capture saw it or not; frozen rows are old.
pub async fn scan_since(
    conn: &mut PgConnection,
    shape: &TableShape,
    side: Side,
    since: i64,
    hash: KeyHash,
) -> EngineResult<Scan> {
    let sql = format!(
        "SELECT count(*), {}, coalesce(jsonb_agg(to_jsonb({})) FILTER (WHERE age(t.xmin) <= (SELECT age($1::text::xid))), '[]')::text
           FROM {}",
        key_checksum(shape, hash),
        key_array(shape),
        shape.from(side)
    );
    let row = sqlx::query(&sql)
        .bind((since & 0xFFFF_FFFF).to_string())
        .fetch_one(conn)
        .await
        .context(|| {
            format!(
                "reading the rows of {} written since the range pass on the {}",
                shape.name,
                side.words()
            )
        })?;
    let written: String = row.get(2);
    let written = serde_json::from_str(&written).map_err(|e| {
        crate::engine::EngineError::invalid(
            "unreadable_keys",
            format!("unreadable keys of {}: {e}", shape.name),
        )
    })?;
    Ok(Scan {
        rows: row.get(0),
        keys_checksum: row.get(1),
        written,
    })
}

/// The row md5 of each of `keys` that exists on `side`, by position in `keys`. Keys are typed by
/// the side's own key column types and matched with the key's equality.
pub async fn rows_of(
    conn: &mut PgConnection,
    shape: &TableShape,
    side: Side,
    keys: &[KeyBound],
) -> EngineResult<HashMap<i64, String>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let types = shape.key_types(side);
    let matches: Vec<String> = shape
        .key_columns()
        .iter()
        .zip(&types)
        .enumerate()
        .map(|(i, (col, ty))| format!("{col} = (k.v ->> {i})::{ty}"))
        .collect();
    let sql = format!(
        "SELECT k.n, md5({}) FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS k(v, n)
           JOIN {} ON {}",
        shape.row_text(),
        shape.from(side),
        matches.join(" AND ")
    );
    let keys = serde_json::to_string(keys).unwrap_or_else(|_| "[]".into());
    let rows = sqlx::query(&sql)
        .bind(keys)
        .fetch_all(conn)
        .await
        .context(|| {
            format!(
                "reading rows of {} by key on the {}",
                shape.name,
                side.words()
            )
        })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A key as people read it: `(1500)`, `(3, k3)`.
pub fn key_words(key: &KeyBound) -> String {
    format!("({})", key.join(", "))
}

/// A key range as shown to callers: `{"after": [...] | null, "up_to": [...] | null}`.
pub fn range_json(lo: Option<&KeyBound>, hi: Option<&KeyBound>) -> Value {
    serde_json::json!({ "after": lo, "up_to": hi })
}

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
