//! Engine layer (cutover): foreign keys on the target that cross the migration's edge. The worker
//! applies rows with `session_replication_role = replica`, so no foreign key is checked while it
//! does: a key from a migrated table to a table outside the migration can end up pointing at a row
//! the target does not have (and a key from a table outside to a migrated one at a row replication
//! deleted), while PostgreSQL still marks it valid. Within the migration the source's own keys hold
//! and every batch commits the source's state, so only keys that cross the edge are at risk.

use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::engine::error::Context;
use crate::engine::{quote_ident, EngineResult};
use crate::store::TableSpec;

/// A foreign key on the target with one end outside the migration.
#[derive(Debug, Clone, Serialize)]
pub struct CrossingKey {
    /// The constraint's name.
    pub name: String,
    /// `schema.table` holding the key.
    pub table: String,
    /// `schema.table` it references.
    pub references: String,
    /// The holding table is migrated and the referenced one is not (`true`), or the other way.
    pub outbound: bool,
    #[serde(skip)]
    check: Check,
}

#[derive(Debug, Clone)]
struct Check {
    table_sql: String,
    table_partitioned: bool,
    references_sql: String,
    references_partitioned: bool,
    columns: Vec<String>,
    referenced_columns: Vec<String>,
    match_full: bool,
}

const CROSSING_SQL: &str = "
WITH migrated AS (
    SELECT c.oid FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN unnest($1::text[], $2::text[]) AS m(s, t) ON n.nspname = m.s AND c.relname = m.t)
SELECT con.conname::text AS name,
       cn.nspname || '.' || cc.relname AS tbl, format('%I.%I', cn.nspname, cc.relname) AS tbl_sql,
       cc.relkind = 'p' AS tbl_partitioned,
       fn.nspname || '.' || fc.relname AS refs, format('%I.%I', fn.nspname, fc.relname) AS refs_sql,
       fc.relkind = 'p' AS refs_partitioned,
       con.conrelid IN (SELECT oid FROM migrated) AS outbound,
       con.confmatchtype = 'f' AS match_full,
       (SELECT array_agg(a.attname::text ORDER BY k.i)
          FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, i)
          JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum) AS cols,
       (SELECT array_agg(a.attname::text ORDER BY k.i)
          FROM unnest(con.confkey) WITH ORDINALITY AS k(attnum, i)
          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum) AS ref_cols
  FROM pg_constraint con
  JOIN pg_class cc ON cc.oid = con.conrelid
  JOIN pg_namespace cn ON cn.oid = cc.relnamespace
  JOIN pg_class fc ON fc.oid = con.confrelid
  JOIN pg_namespace fn ON fn.oid = fc.relnamespace
 WHERE con.contype = 'f' AND con.conparentid = 0
   AND (con.conrelid IN (SELECT oid FROM migrated)) <> (con.confrelid IN (SELECT oid FROM migrated))
 ORDER BY 2, 1";

/// The target's foreign keys that cross the edge of `tables` (read on the target).
pub async fn crossing(
    dst: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Vec<CrossingKey>> {
    let schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let rows = sqlx::query(CROSSING_SQL)
        .bind(&schemas)
        .bind(&names)
        .fetch_all(dst)
        .await
        .context(|| "listing foreign keys on the target".into())?;
    Ok(rows
        .iter()
        .map(|r| CrossingKey {
            name: r.get("name"),
            table: r.get("tbl"),
            references: r.get("refs"),
            outbound: r.get("outbound"),
            check: Check {
                table_sql: r.get("tbl_sql"),
                table_partitioned: r.get("tbl_partitioned"),
                references_sql: r.get("refs_sql"),
                references_partitioned: r.get("refs_partitioned"),
                columns: r.get::<Option<Vec<String>>, _>("cols").unwrap_or_default(),
                referenced_columns: r
                    .get::<Option<Vec<String>>, _>("ref_cols")
                    .unwrap_or_default(),
                match_full: r.get("match_full"),
            },
        })
        .collect())
}

impl CrossingKey {
    /// `foreign key item_writer_fkey on public.item references public.writer_ref`, naming the
    /// side outside the migration.
    pub fn words(&self) -> String {
        if self.outbound {
            format!(
                "foreign key {} on {} references {}, which is not in the migration",
                self.name, self.table, self.references
            )
        } else {
            format!(
                "foreign key {} on {}, which is not in the migration, references {}",
                self.name, self.table, self.references
            )
        }
    }

    /// The migrated table this key is about.
    pub fn migrated_table(&self) -> &str {
        if self.outbound {
            &self.table
        } else {
            &self.references
        }
    }

    /// Rows of the holding table that violate the key now (read on the target).
    pub async fn violations(&self, dst: &mut PgConnection) -> EngineResult<i64> {
        let c = &self.check;
        let only = |partitioned: bool| if partitioned { "" } else { "ONLY " };
        let col = |prefix: &str, name: &String| format!("{prefix}.{}", quote_ident(name));
        let matches: Vec<String> = c
            .columns
            .iter()
            .zip(&c.referenced_columns)
            .map(|(a, b)| format!("{} = {}", col("p", b), col("c", a)))
            .collect();
        let all_set: Vec<String> = c
            .columns
            .iter()
            .map(|a| format!("{} IS NOT NULL", col("c", a)))
            .collect();
        let missing = format!(
            "NOT EXISTS (SELECT 1 FROM {}{} p WHERE {})",
            only(c.references_partitioned),
            c.references_sql,
            matches.join(" AND ")
        );
        // MATCH SIMPLE checks rows whose key columns are all set; MATCH FULL also refuses a key
        // that is only partly set.
        let violates = if c.match_full {
            let any_set: Vec<String> = c
                .columns
                .iter()
                .map(|a| format!("{} IS NOT NULL", col("c", a)))
                .collect();
            format!(
                "({}) AND (NOT ({}) OR {missing})",
                any_set.join(" OR "),
                all_set.join(" AND ")
            )
        } else {
            format!("{} AND {missing}", all_set.join(" AND "))
        };
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}{} c WHERE {violates}",
            only(c.table_partitioned),
            c.table_sql
        ))
        .fetch_one(dst)
        .await
        .context(|| format!("checking foreign key {} on the target", self.name))
    }
}
