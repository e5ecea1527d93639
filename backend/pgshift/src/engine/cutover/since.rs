//! Engine layer (cutover): reading what changed on one side since a point, for the cutover's
//! incremental check inside the freeze (see `content`): a checksum of the key set, the keys of the
//! row versions written since a transaction id, and the rows of given keys. Statements run in a
//! comparable session, as `verify`'s do.

use std::collections::HashMap;

use sqlx::{PgConnection, Row};

use super::shape::{Side, TableShape};
use super::verify::{checksum, key_array, KeyBound};
use crate::engine::error::Context;
use crate::engine::EngineResult;

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
