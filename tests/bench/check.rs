//! Comparing the source and the target: cheap aggregates while waiting, and an exact comparison
//! of every row (md5 of the rows' text, per bucket of keys) at the end of each phase.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sqlx::PgPool;

use crate::common::{Ctx, R};

/// The migrated tables and their (single, integer) primary-key column.
pub const TABLES: &[(&str, &str)] = &[
    ("public.pgbench_accounts", "aid"),
    ("public.pgbench_branches", "bid"),
    ("public.pgbench_tellers", "tid"),
    ("public.pgbench_history", "id"),
    ("public.heartbeat", "id"),
];

/// Keys per md5 bucket: bounds the size of each string_agg at ~10 MB for pgbench rows.
const BUCKET: i64 = 100_000;

/// `count(*)` of every table, in [`TABLES`] order.
pub async fn counts(pool: &PgPool) -> R<Vec<i64>> {
    let mut out = Vec::new();
    for (table, _) in TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .ctx(|| format!("counting {table}"))?;
        out.push(n);
    }
    Ok(out)
}

/// `sum(abalance)` and `count(*)` of pgbench_accounts.
pub async fn accounts(pool: &PgPool) -> R<(i64, i64)> {
    let (sum, count): (Option<i64>, i64) =
        sqlx::query_as("SELECT sum(abalance)::bigint, count(*) FROM public.pgbench_accounts")
            .fetch_one(pool)
            .await
            .ctx(|| "summing pgbench_accounts".into())?;
    Ok((sum.unwrap_or(0), count))
}

/// `max(id)` and `count(*)` of pgbench_history.
pub async fn history(pool: &PgPool) -> R<(i64, i64)> {
    sqlx::query_as("SELECT coalesce(max(id), 0)::bigint, count(*) FROM public.pgbench_history")
        .fetch_one(pool)
        .await
        .ctx(|| "reading pgbench_history".into())
}

/// Per bucket of keys: (bucket, rows, md5 of the rows' text in key order).
async fn fingerprint(pool: &PgPool, table: &str, pk: &str) -> R<BTreeMap<i64, (i64, String)>> {
    let sql = format!(
        "SELECT ({pk} / {BUCKET})::bigint AS b, count(*), md5(string_agg(t::text, ',' ORDER BY {pk}))
           FROM {table} t GROUP BY 1"
    );
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(&sql)
        .fetch_all(pool)
        .await
        .ctx(|| format!("fingerprinting {table}"))?;
    Ok(rows.into_iter().map(|(b, n, md5)| (b, (n, md5))).collect())
}

/// Every row of one bucket, by key.
async fn bucket_rows(
    pool: &PgPool,
    table: &str,
    pk: &str,
    bucket: i64,
) -> R<BTreeMap<i64, String>> {
    let sql = format!(
        "SELECT {pk}::bigint, t::text FROM {table} t WHERE ({pk} / {BUCKET})::bigint = $1 ORDER BY {pk}"
    );
    let rows: Vec<(i64, String)> = sqlx::query_as(&sql)
        .bind(bucket)
        .fetch_all(pool)
        .await
        .ctx(|| format!("reading {table}"))?;
    Ok(rows.into_iter().collect())
}

/// Compares every table row by row (through fingerprints). Returns a description of each
/// difference; empty when the target equals the source.
pub async fn compare(src: &PgPool, dst: &PgPool) -> R<Vec<String>> {
    let mut diffs = Vec::new();
    for (table, pk) in TABLES {
        let (a, b) = tokio::join!(fingerprint(src, table, pk), fingerprint(dst, table, pk));
        let (a, b) = (a?, b?);
        if a == b {
            continue;
        }
        let rows_a: i64 = a.values().map(|(n, _)| n).sum();
        let rows_b: i64 = b.values().map(|(n, _)| n).sum();
        let mut buckets: Vec<i64> = a.keys().chain(b.keys()).copied().collect();
        buckets.sort_unstable();
        buckets.dedup();
        let differing: Vec<i64> = buckets
            .into_iter()
            .filter(|k| a.get(k) != b.get(k))
            .collect();
        let mut d = format!(
            "{table}: source has {rows_a} rows, target {rows_b}; {} of the {}-key buckets differ (keys from {} on)",
            differing.len(),
            BUCKET,
            differing[0] * BUCKET
        );
        // The first few differing rows, to reproduce from.
        let first = differing[0];
        let (ra, rb) = tokio::join!(
            bucket_rows(src, table, pk, first),
            bucket_rows(dst, table, pk, first)
        );
        let (ra, rb) = (ra?, rb?);
        let mut shown = 0;
        let keys: std::collections::BTreeSet<i64> = ra.keys().chain(rb.keys()).copied().collect();
        for k in keys {
            let (x, y) = (ra.get(&k), rb.get(&k));
            if x == y {
                continue;
            }
            let _ = write!(
                d,
                "\n  {pk}={k}: source {} | target {}",
                x.map_or("(missing)".to_string(), |s| s.clone()),
                y.map_or("(missing)".to_string(), |s| s.clone())
            );
            shown += 1;
            if shown == 5 {
                break;
            }
        }
        diffs.push(d);
    }
    Ok(diffs)
}
