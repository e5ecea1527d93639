//! Engine layer: the comparison operators of a table's key, named with their schema. pgshift's
//! sessions pin `search_path = pg_catalog, pg_temp` (so a database owner cannot have pgshift's role
//! run their code), which hides the operators of a type that lives elsewhere: `citext`'s `=` would
//! resolve to `text`'s through the implicit cast (case-sensitive), `ltree`'s not at all. Every key
//! comparison pgshift writes (the copy's chunk ranges, apply's key matches, tombstones) goes
//! through the operators resolved here, per column and per server.

use sqlx::PgConnection;

use super::error::Context;
use super::{quote_ident, EngineResult};
use crate::store::TableSpec;

/// The operators of one key column, each ready to put between two operands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnOps {
    pub eq: String,
    pub gt: String,
    pub ge: String,
}

impl ColumnOps {
    /// The built-in operators, as unqualified names resolve them in pg_catalog.
    fn catalog() -> Self {
        Self::in_schema("pg_catalog")
    }

    fn in_schema(schema: &str) -> Self {
        let op = |name: &str| format!("OPERATOR({}.{name})", quote_ident(schema));
        Self {
            eq: op("="),
            gt: op(">"),
            ge: op(">="),
        }
    }
}

/// The operators of a table's key columns on the connected server, in key order. A type (or a
/// domain's base type) with its own `=` taking exactly that type on both sides uses that
/// operator's schema; anything else (built-in types, enums, arrays, ranges, types that compare
/// through a binary-compatible built-in) resolves in pg_catalog.
pub async fn key_operators(
    conn: &mut PgConnection,
    table: &TableSpec,
) -> EngineResult<Vec<ColumnOps>> {
    let mut out = Vec::with_capacity(table.key.len());
    for column in &table.key {
        let schema: Option<String> = sqlx::query_scalar(
            "WITH RECURSIVE base(oid, depth) AS (
                 SELECT a.atttypid, 0 FROM pg_attribute a
                  WHERE a.attrelid = $1::regclass AND a.attname = $2 AND NOT a.attisdropped
                 UNION ALL
                 SELECT t.typbasetype, b.depth + 1 FROM base b JOIN pg_type t ON t.oid = b.oid
                  WHERE t.typtype = 'd')
             SELECT n.nspname::text
               FROM base b
               JOIN pg_operator o ON o.oprname = '=' AND o.oprleft = b.oid AND o.oprright = b.oid
               JOIN pg_namespace n ON n.oid = o.oprnamespace
              WHERE NOT EXISTS (SELECT 1 FROM base d WHERE d.depth > b.depth)
              LIMIT 1",
        )
        .bind(table.sql_name())
        .bind(column)
        .fetch_optional(&mut *conn)
        .await
        .context(|| format!("reading the key operators of {}", table.display_name()))?;
        out.push(match schema.as_deref() {
            None | Some("pg_catalog") => ColumnOps::catalog(),
            Some(schema) => ColumnOps::in_schema(schema),
        });
    }
    Ok(out)
}

/// `a.k1 = b.k1 AND …` over the key, with each column's own `=`.
pub fn key_equal(ops: &[ColumnOps], left: &[String], right: &[String]) -> String {
    ops.iter()
        .zip(left.iter().zip(right))
        .map(|(op, (l, r))| format!("{l} {} {r}", op.eq))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The key (`columns`) sorts after `values` in the key's own order: the lexicographic form
/// `(k1 > v1) OR (k1 = v1 AND k2 > v2) OR …`, led by `k1 >= v1` so that an index on the key
/// still bounds the scan.
pub fn key_after(ops: &[ColumnOps], columns: &[String], values: &[String]) -> String {
    let mut terms = Vec::with_capacity(ops.len());
    for i in 0..ops.len() {
        let mut parts: Vec<String> = (0..i)
            .map(|j| format!("{} {} {}", columns[j], ops[j].eq, values[j]))
            .collect();
        parts.push(format!("{} {} {}", columns[i], ops[i].gt, values[i]));
        terms.push(format!("({})", parts.join(" AND ")));
    }
    format!(
        "({} {} {} AND ({}))",
        columns[0],
        ops[0].ge,
        values[0],
        terms.join(" OR ")
    )
}

/// The key sorts at or before `values`: the negation of [`key_after`] (keys hold no NULLs).
pub fn key_up_to(ops: &[ColumnOps], columns: &[String], values: &[String]) -> String {
    format!("NOT {}", key_after(ops, columns, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lexicographic_order_over_the_key() {
        let ops = vec![ColumnOps::in_schema("public"), ColumnOps::catalog()];
        let after = key_after(&ops, &names(&["a", "b"]), &names(&["'x'", "2"]));
        assert_eq!(
            after,
            "(a OPERATOR(\"public\".>=) 'x' AND ((a OPERATOR(\"public\".>) 'x') OR \
             (a OPERATOR(\"public\".=) 'x' AND b OPERATOR(\"pg_catalog\".>) 2)))"
        );
        assert!(key_up_to(&ops, &names(&["a", "b"]), &names(&["'x'", "2"])).starts_with("NOT ("));
        assert_eq!(
            key_equal(&ops, &names(&["t.a", "t.b"]), &names(&["r.c0", "r.c1"])),
            "t.a OPERATOR(\"public\".=) r.c0 AND t.b OPERATOR(\"pg_catalog\".=) r.c1"
        );
    }
}
