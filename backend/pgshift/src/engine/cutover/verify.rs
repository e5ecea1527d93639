//! Comparing source and target: row counts and order-independent checksums per table (at
//! cutover, with the source frozen and the target drained) and per primary-key range (on
//! demand, while replication runs, each side read under a snapshot of the same moment).

use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};

use crate::engine::error::Context;
use crate::engine::{quote_ident, EngineResult};
use crate::store::TableSpec;

/// Count and checksum of some rows. The checksum is the sum of a 60-bit slice of each row's
/// md5, so it needs no ordering and no memory beyond the running sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Digest {
    pub rows: i64,
    pub checksum: Option<String>,
}

/// One table compared at cutover.
#[derive(Debug, Clone, Serialize)]
pub struct TableComparison {
    pub table: String,
    pub source: Digest,
    pub target: Digest,
    pub matches: bool,
}

fn row_text(t: &TableSpec) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("t.{}", quote_ident(&c.name)))
        .collect();
    format!("ROW({})::text", cols.join(", "))
}

fn digest_select(t: &TableSpec, checksums: bool) -> String {
    let sum = if checksums {
        format!(
            "coalesce(sum(('x' || left(md5({}), 15))::bit(60)::bigint), 0)::text",
            row_text(t)
        )
    } else {
        "NULL::text".into()
    };
    format!("SELECT count(*), {sum} FROM {} t", t.sql_name())
}

/// A primary-key bound: the key's values as text, in key order.
pub type KeyBound = Vec<String>;

/// `WHERE` clause for keys in (lo, hi]; `None` bounds are open. Parameters start at `$1`.
fn range_clause(t: &TableSpec, lo: Option<&KeyBound>, hi: Option<&KeyBound>) -> String {
    let key = |prefix: &str| -> Vec<String> {
        t.key
            .iter()
            .map(|k| format!("{prefix}{}", quote_ident(k)))
            .collect()
    };
    let types: Vec<String> = t
        .key
        .iter()
        .map(|k| {
            t.columns
                .iter()
                .find(|c| &c.name == k)
                .map(|c| c.type_name.clone())
                .unwrap_or_else(|| "text".into())
        })
        .collect();
    let tuple = |items: Vec<String>| {
        if items.len() == 1 {
            items[0].clone()
        } else {
            format!("({})", items.join(", "))
        }
    };
    let cols = tuple(key("t."));
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

async fn digest(
    conn: &mut PgConnection,
    sql: &str,
    binds: &[&KeyBound],
    what: &str,
) -> EngineResult<Digest> {
    let mut q = sqlx::query(sql);
    for b in binds {
        for v in b.iter() {
            q = q.bind(v);
        }
    }
    let row = q
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
    t: &TableSpec,
    checksums: bool,
) -> EngineResult<Digest> {
    digest(conn, &digest_select(t, checksums), &[], &t.display_name()).await
}

/// Count and checksum of the keys in (lo, hi].
pub async fn range_digest(
    conn: &mut PgConnection,
    t: &TableSpec,
    lo: Option<&KeyBound>,
    hi: Option<&KeyBound>,
) -> EngineResult<Digest> {
    let sql = format!(
        "{} WHERE {}",
        digest_select(t, true),
        range_clause(t, lo, hi)
    );
    let binds: Vec<&KeyBound> = lo.into_iter().chain(hi).collect();
    digest(conn, &sql, &binds, &t.display_name()).await
}

/// Every `every`-th key in key order: the upper bounds of ranges of about `every` rows (the last
/// range, above the last bound, is open).
pub async fn range_bounds(
    conn: &mut PgConnection,
    t: &TableSpec,
    every: i64,
) -> EngineResult<Vec<KeyBound>> {
    let keys: Vec<String> = t.key.iter().map(|k| quote_ident(k)).collect();
    let as_text: Vec<String> = keys.iter().map(|k| format!("{k}::text")).collect();
    let sql = format!(
        "SELECT ARRAY[{}] FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS pgshift_rn FROM {}) s
          WHERE pgshift_rn % $1 = 0 ORDER BY pgshift_rn",
        as_text.join(", "),
        keys.join(", "),
        keys.join(", "),
        t.sql_name()
    );
    sqlx::query_scalar(&sql)
        .bind(every)
        .fetch_all(conn)
        .await
        .context(|| format!("splitting {} into key ranges", t.display_name()))
}

/// A key range as shown to callers: `{"after": [...] | null, "up_to": [...] | null}`.
pub fn range_json(lo: Option<&KeyBound>, hi: Option<&KeyBound>) -> Value {
    serde_json::json!({ "after": lo, "up_to": hi })
}

/// Replaces the target's rows in (lo, hi] with the source's. The caller holds the source table
/// still (brief lock) and has drained the target, so the range is exact; `dst` is a target
/// transaction with `session_replication_role = replica`.
pub async fn copy_range(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    t: &TableSpec,
    lo: Option<&KeyBound>,
    hi: Option<&KeyBound>,
) -> EngineResult<u64> {
    let clause = range_clause(t, lo, hi);
    let delete = format!("DELETE FROM {} t WHERE {clause}", t.sql_name());
    let mut q = sqlx::query(&delete);
    for v in lo.into_iter().chain(hi).flatten() {
        q = q.bind(v);
    }
    q.execute(&mut *dst)
        .await
        .context(|| format!("clearing a key range of {} on the target", t.display_name()))?;
    let cols: Vec<String> = t.writable_columns().map(|c| quote_ident(&c.name)).collect();
    let select: Vec<String> = cols.iter().map(|c| format!("t.{c}")).collect();
    // Rows travel as JSON text (never parsed here: floats must not pass through f64 parsing),
    // typed on arrival by the target's own column types.
    let read = format!(
        "SELECT coalesce(jsonb_agg(to_jsonb(r)), '[]')::text FROM (SELECT {} FROM {} t WHERE {clause}) r",
        select.join(", "),
        t.sql_name()
    );
    let mut q = sqlx::query_scalar::<_, String>(&read);
    for v in lo.into_iter().chain(hi).flatten() {
        q = q.bind(v);
    }
    let rows = q
        .fetch_one(&mut *src)
        .await
        .context(|| format!("reading a key range of {} on the source", t.display_name()))?;
    let count: i64 = sqlx::query_scalar("SELECT jsonb_array_length($1::jsonb)::bigint")
        .bind(&rows)
        .fetch_one(&mut *dst)
        .await
        .context(|| "counting copied rows".into())?;
    let overriding = if t.columns.iter().any(|c| c.identity_always) {
        "OVERRIDING SYSTEM VALUE"
    } else {
        ""
    };
    sqlx::query(&format!(
        "INSERT INTO {} ({cols}) {overriding} SELECT {cols} FROM jsonb_populate_recordset(NULL::{}, $1::jsonb)",
        t.sql_name(),
        t.sql_name(),
        cols = cols.join(", ")
    ))
    .bind(rows)
    .execute(&mut *dst)
    .await
    .context(|| format!("writing a key range of {} on the target", t.display_name()))?;
    Ok(count as u64)
}
