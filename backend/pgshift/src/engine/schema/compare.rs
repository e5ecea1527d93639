//! Engine layer (target schema): how the migrated tables differ between the two sides, named
//! exactly (table, column, type, nullability, generated, key): for schema `existing`, where the
//! operator made the target's tables, in the refusal at creation, the preview and the migration's
//! view.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::PgConnection;

use crate::engine::error::Context;
use crate::engine::{EngineError, EngineResult};
use crate::store::TableSpec;

/// One difference between a source table and its target table.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Difference {
    /// `schema.table`.
    pub table: String,
    /// The column, when the difference is one column's.
    pub column: Option<String>,
    /// `table_missing`, `column_missing_on_target`, `column_missing_on_source`, `type`,
    /// `nullability`, `generated` or `key`.
    pub kind: String,
    /// What the source has (a type, `NOT NULL`/`NULL`, the key's columns).
    pub source: Option<String>,
    /// What the target has.
    pub target: Option<String>,
    /// Whether pgshift refuses the table for it (a difference that loses or refuses rows);
    /// otherwise it is shown only.
    pub refused: bool,
    /// The difference in words.
    pub words: String,
}

/// The differences of one table.
pub type TableDifferences = Vec<Difference>;

struct Column {
    name: String,
    type_name: String,
    not_null: bool,
    generated: bool,
}

/// Every column of each of `tables` (quoted names) on one side, in one round trip; a table
/// that does not exist there is missing from the map.
async fn columns(
    conn: &mut PgConnection,
    tables: &[String],
) -> EngineResult<HashMap<String, Vec<Column>>> {
    let rows: Vec<(String, String, String, bool, bool)> = sqlx::query_as(
        "SELECT t.name, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attgenerated <> ''
           FROM unnest($1::text[]) AS t(name)
           JOIN pg_catalog.pg_attribute a ON a.attrelid = to_regclass(t.name)
          WHERE a.attnum > 0 AND NOT a.attisdropped
          ORDER BY t.name, a.attnum",
    )
    .bind(tables)
    .fetch_all(&mut *conn)
    .await
    .context(|| "reading the columns of the migrated tables".into())?;
    let mut out: HashMap<String, Vec<Column>> = HashMap::new();
    for (table, name, type_name, not_null, generated) in rows {
        out.entry(table).or_default().push(Column {
            name,
            type_name,
            not_null,
            generated,
        });
    }
    Ok(out)
}

/// The key pgshift would identify each table's rows by on one side: the primary key, or else
/// the unique index over NOT NULL columns with the fewest columns (as `catalog::user_tables`
/// picks it on the source); one round trip.
async fn keys(
    conn: &mut PgConnection,
    tables: &[String],
) -> EngineResult<HashMap<String, Vec<String>>> {
    let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT t.name, k.cols
           FROM unnest($1::text[]) AS t(name)
           CROSS JOIN LATERAL (
               SELECT array(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                              JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                             WHERE k.ord <= i.indnkeyatts ORDER BY k.ord) AS cols
                 FROM pg_catalog.pg_index i
                WHERE i.indrelid = to_regclass(t.name) AND i.indisunique AND i.indisvalid
                  AND i.indpred IS NULL AND i.indexprs IS NULL AND (i.indisprimary OR i.indimmediate)
                  AND (i.indisprimary OR NOT EXISTS (
                          SELECT 1 FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                            JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                           WHERE k.ord <= i.indnkeyatts AND NOT a.attnotnull))
                ORDER BY i.indisprimary DESC, i.indnkeyatts, i.indexrelid::regclass::text
                LIMIT 1) k",
    )
    .bind(tables)
    .fetch_all(&mut *conn)
    .await
    .context(|| "reading the keys of the migrated tables".into())?;
    Ok(rows.into_iter().collect())
}

fn nullability(not_null: bool) -> String {
    if not_null { "NOT NULL" } else { "NULL" }.to_string()
}

/// Every difference between the source's and the target's `tables`.
pub async fn compare(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Vec<Difference>> {
    let names: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    let mut source_columns = columns(src, &names).await?;
    let mut target_columns = columns(dst, &names).await?;
    let target_keys = keys(dst, &names).await?;
    let mut out = Vec::new();
    for t in tables {
        let name = t.display_name();
        let diff = |column: Option<&str>,
                    kind: &str,
                    source: Option<String>,
                    target: Option<String>,
                    refused: bool,
                    words: String| Difference {
            table: name.clone(),
            column: column.map(str::to_string),
            kind: kind.into(),
            source,
            target,
            refused,
            words: format!("{name}: {words}"),
        };
        let Some(source) = source_columns.remove(&t.sql_name()) else {
            continue;
        };
        let Some(target) = target_columns.remove(&t.sql_name()) else {
            out.push(diff(
                None,
                "table_missing",
                None,
                None,
                true,
                "does not exist on the target".into(),
            ));
            continue;
        };
        for s in &source {
            let Some(d) = target.iter().find(|d| d.name == s.name) else {
                out.push(diff(
                    Some(&s.name),
                    "column_missing_on_target",
                    Some(s.type_name.clone()),
                    None,
                    true,
                    format!(
                        "column {} ({}) is missing on the target",
                        s.name, s.type_name
                    ),
                ));
                continue;
            };
            if s.type_name != d.type_name {
                out.push(diff(
                    Some(&s.name),
                    "type",
                    Some(s.type_name.clone()),
                    Some(d.type_name.clone()),
                    true,
                    format!(
                        "column {} is {} on the source but {} on the target",
                        s.name, s.type_name, d.type_name
                    ),
                ));
            }
            if s.generated != d.generated {
                let g = |b: bool| if b { "generated" } else { "not generated" };
                out.push(diff(
                    Some(&s.name),
                    "generated",
                    Some(g(s.generated).into()),
                    Some(g(d.generated).into()),
                    true,
                    format!(
                        "column {} is {} on the source but {} on the target",
                        s.name,
                        g(s.generated),
                        g(d.generated)
                    ),
                ));
            }
            if s.not_null != d.not_null {
                // NOT NULL on the target only refuses rows the source may hold; on the source
                // only, every row fits: shown, not refused.
                let refused = d.not_null;
                out.push(diff(
                    Some(&s.name),
                    "nullability",
                    Some(nullability(s.not_null)),
                    Some(nullability(d.not_null)),
                    refused,
                    format!(
                        "column {} is {} on the source but {} on the target{}",
                        s.name,
                        nullability(s.not_null),
                        nullability(d.not_null),
                        if refused {
                            " (rows with NULL would be refused there)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        for d in &target {
            if !source.iter().any(|s| s.name == d.name) {
                out.push(diff(
                    Some(&d.name),
                    "column_missing_on_source",
                    None,
                    Some(d.type_name.clone()),
                    true,
                    format!(
                        "column {} ({}) exists on the target only",
                        d.name, d.type_name
                    ),
                ));
            }
        }
        let source_key = t.key.clone();
        let target_key = target_keys.get(&t.sql_name()).cloned().unwrap_or_default();
        if source_key != target_key {
            let show = |k: &[String]| {
                if k.is_empty() {
                    "none".to_string()
                } else {
                    format!("({})", k.join(", "))
                }
            };
            out.push(diff(
                None,
                "key",
                Some(show(&source_key)),
                Some(show(&target_key)),
                true,
                format!(
                    "the key is {} on the source but {} on the target",
                    show(&source_key),
                    show(&target_key)
                ),
            ));
        }
    }
    Ok(out)
}

/// The refusal for the differences pgshift cannot migrate through (None when there are none):
/// its code names the first one's kind, its message every one.
pub fn differences_error(differences: &[Difference]) -> Option<EngineError> {
    let refused: Vec<&Difference> = differences.iter().filter(|d| d.refused).collect();
    let first = refused.first()?;
    let code = match first.kind.as_str() {
        "table_missing" => "target_table_missing",
        "key" => "target_key_differs",
        _ => "target_columns_differ",
    };
    let words: Vec<&str> = refused.iter().map(|d| d.words.as_str()).collect();
    let hint = if first.kind == "table_missing" {
        "; create it there, or let pgshift build the target's tables (schema \"create\", on an empty target)"
    } else {
        "; make the target's tables match the source's"
    };
    Some(EngineError::invalid(
        code,
        format!(
            "the target's tables differ from the source's: {}{hint}",
            words.join("; ")
        ),
    ))
}
