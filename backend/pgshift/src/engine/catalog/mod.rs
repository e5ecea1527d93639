//! Engine layer: what a catalog says about the tables to migrate, and the checks a migration must
//! pass before anything is installed. Here: reading every user table with its key and columns,
//! and turning the selected ones into the specs stored with the migration. Picking tables by
//! pattern is in `patterns.rs`, the checks on each table's key in `keys.rs`, and the checks each
//! side must pass (tables, privileges, row-level security) in `checks.rs`.

mod checks;
mod keys;
mod patterns;

pub(crate) use checks::missing_table_privileges;
pub use checks::{
    can_silence_triggers, check_replication_role, check_schema_usage, check_source, check_target,
    replication_role_missing,
};
pub use keys::{check_key_collations, check_keys_comparable, check_keys_immediate};
pub use patterns::{pattern_matches, select_tables, TablePattern, MAX_PATTERNS, MAX_PATTERN_CHARS};

use sqlx::{PgConnection, Row};

use super::error::Context;
use super::EngineResult;
use crate::store::{ColumnSpec, TableSpec};

/// A table as found in a catalog.
#[derive(Debug, Clone)]
pub struct CatalogTable {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub partitioned: bool,
    pub key: Vec<String>,
    /// The unique index the key comes from when the table has no primary key.
    pub key_index: Option<String>,
    pub columns: Vec<ColumnSpec>,
}

impl CatalogTable {
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Tables with the key pgshift identifies their rows by: the primary key, or else the unique
/// index over NOT NULL columns with the fewest columns (then by name; immediate, valid, no
/// predicate, no expression), which identifies a row just as well (issue 10). Only an index's
/// key columns count, not its INCLUDE columns.
const TABLES_SQL: &str = r#"
WITH unique_keys AS (
    SELECT i.indrelid, i.indisprimary, i.indexrelid::regclass::text AS index_name,
           array_agg(a.attname::text ORDER BY k.ord) AS cols, bool_and(a.attnotnull) AS not_null
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indisunique AND i.indisvalid AND i.indpred IS NULL
       AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts
       -- A deferrable primary key is still the key (and refused by check_keys_immediate with
       -- the reason); a deferrable unique index is not a candidate.
       AND (i.indisprimary OR i.indimmediate)
     GROUP BY i.indrelid, i.indisprimary, i.indexrelid)
SELECT c.oid::oid AS oid, n.nspname::text AS schema, c.relname::text AS name, c.relkind = 'p' AS partitioned,
       coalesce(pk.cols, uk.cols, '{}') AS key,
       CASE WHEN pk.cols IS NULL THEN uk.index_name END AS key_index
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN unique_keys pk ON pk.indrelid = c.oid AND pk.indisprimary
  LEFT JOIN LATERAL (SELECT u.cols, u.index_name FROM unique_keys u
                      WHERE u.indrelid = c.oid AND NOT u.indisprimary AND u.not_null
                      ORDER BY cardinality(u.cols), u.index_name LIMIT 1) uk ON true
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND n.nspname !~ '^pgshift_'
 ORDER BY n.nspname, c.relname
"#;

const COLUMNS_SQL: &str = r#"
SELECT a.attrelid::oid AS oid, a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type_name,
       a.attgenerated <> '' AS generated, a.attidentity = 'a' AS identity_always
  FROM pg_attribute a
 WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum
"#;

/// Every user table of the connected database (partitions are reached through their parent).
pub async fn user_tables(conn: &mut PgConnection) -> EngineResult<Vec<CatalogTable>> {
    let rows = sqlx::query(TABLES_SQL)
        .fetch_all(&mut *conn)
        .await
        .context(|| "listing tables".into())?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        tables.push(CatalogTable {
            oid: row.get::<sqlx::postgres::types::Oid, _>("oid").0,
            schema: row.get("schema"),
            name: row.get("name"),
            partitioned: row.get("partitioned"),
            key: row.get("key"),
            key_index: row.get("key_index"),
            columns: Vec::new(),
        });
    }
    let oids: Vec<sqlx::postgres::types::Oid> = tables
        .iter()
        .map(|t| sqlx::postgres::types::Oid(t.oid))
        .collect();
    let rows = sqlx::query(COLUMNS_SQL)
        .bind(&oids)
        .fetch_all(&mut *conn)
        .await
        .context(|| "listing columns".into())?;
    for row in rows {
        let oid = row.get::<sqlx::postgres::types::Oid, _>("oid").0;
        if let Some(t) = tables.iter_mut().find(|t| t.oid == oid) {
            t.columns.push(ColumnSpec {
                name: row.get("name"),
                type_name: row.get("type_name"),
                generated: row.get("generated"),
                identity_always: row.get("identity_always"),
            });
        }
    }
    Ok(tables)
}

/// Turns selected source tables into the specs stored with the migration.
pub fn specs(selected: &[CatalogTable]) -> Vec<TableSpec> {
    selected
        .iter()
        .enumerate()
        .map(|(i, t)| TableSpec {
            no: i as i32 + 1,
            schema: t.schema.clone(),
            name: t.name.clone(),
            key: t.key.clone(),
            key_index: t.key_index.clone(),
            columns: t.columns.clone(),
            partitioned: t.partitioned,
        })
        .collect()
}
