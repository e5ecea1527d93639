//! Engine layer (cutover): what a migrated table looks like on each side *now*, read from the
//! catalogs when a comparison runs. The column list stored when the migration was created is not
//! enough: a column added later on both sides must be compared too, and one added on one side only
//! is a difference in itself. Columns are matched by name; the key is the migration's key, typed on
//! each side by that side's own column type.

use sqlx::{PgConnection, Row};

use crate::engine::error::Context;
use crate::engine::{quote_ident, EngineResult};
use crate::store::TableSpec;

/// Which side a statement runs on: types and `ONLY` can differ between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Source => 0,
            Side::Target => 1,
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// A column both sides have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type()` on the source and on the target (schema-qualified outside pg_catalog,
    /// as read in a comparable session).
    types: [String; 2],
    /// Stored generated column on the target: computed there, never written.
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY` on the target: inserts need `OVERRIDING SYSTEM VALUE`.
    pub identity_always: bool,
}

/// One column as one catalog describes it.
#[derive(Debug, Clone)]
struct CatalogColumn {
    name: String,
    type_name: String,
    generated: bool,
    identity_always: bool,
}

/// A relation as one catalog describes it.
#[derive(Debug, Clone)]
struct CatalogRelation {
    partitioned: bool,
    columns: Vec<CatalogColumn>,
}

/// A migrated table as both catalogs describe it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    /// `schema.table`, unquoted.
    pub name: String,
    sql_name: String,
    /// Columns on both sides, in the source's order: the row text both sides compare.
    pub columns: Vec<Column>,
    /// The migration's key columns, in key order.
    pub key: Vec<String>,
    /// Partitioned on each side: its rows are its partitions' (otherwise `ONLY` the table's own).
    partitioned: [bool; 2],
    /// Where the definitions differ, one sentence each, e.g. `public.t: column w exists only on
    /// the target`.
    pub differences: Vec<String>,
    /// Both sides have the table and every key column, so rows can be compared by key (or, for
    /// a table without a key, as a whole).
    pub comparable: bool,
}

const RELATION_SQL: &str = "
SELECT c.relkind = 'p' AS partitioned, a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod) AS type_name,
       coalesce(a.attgenerated <> '', false) AS generated,
       coalesce(a.attidentity = 'a', false) AS identity_always
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
 ORDER BY a.attnum";

async fn relation(
    conn: &mut PgConnection,
    t: &TableSpec,
    side: Side,
) -> EngineResult<Option<CatalogRelation>> {
    let rows = sqlx::query(RELATION_SQL)
        .bind(&t.schema)
        .bind(&t.name)
        .fetch_all(conn)
        .await
        .context(|| {
            format!(
                "reading the columns of {} on the {}",
                t.display_name(),
                side.words()
            )
        })?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let partitioned = first.get("partitioned");
    let columns = rows
        .iter()
        .filter_map(|r| {
            Some(CatalogColumn {
                name: r.get::<Option<String>, _>("name")?,
                type_name: r.get("type_name"),
                generated: r.get("generated"),
                identity_always: r.get("identity_always"),
            })
        })
        .collect();
    Ok(Some(CatalogRelation {
        partitioned,
        columns,
    }))
}

/// Reads the table's definition on both sides (each connection must be a comparable session, so
/// type names come out schema-qualified) and compares them.
pub async fn read(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    t: &TableSpec,
) -> EngineResult<TableShape> {
    let (a, b) = tokio::join!(
        relation(src, t, Side::Source),
        relation(dst, t, Side::Target)
    );
    Ok(compare(t, a?, b?))
}

fn compare(
    t: &TableSpec,
    src: Option<CatalogRelation>,
    dst: Option<CatalogRelation>,
) -> TableShape {
    let name = t.display_name();
    let mut shape = TableShape {
        name: name.clone(),
        sql_name: t.sql_name(),
        columns: Vec::new(),
        key: t.key.clone(),
        partitioned: [false, false],
        differences: Vec::new(),
        comparable: false,
    };
    let (src, dst) = match (src, dst) {
        (Some(s), Some(d)) => (s, d),
        (s, d) => {
            for (side, found) in [(Side::Source, s.is_some()), (Side::Target, d.is_some())] {
                if !found {
                    shape.differences.push(format!(
                        "{name}: the table does not exist on the {}",
                        side.words()
                    ));
                }
            }
            return shape;
        }
    };
    shape.partitioned = [src.partitioned, dst.partitioned];
    for c in &src.columns {
        match dst.columns.iter().find(|d| d.name == c.name) {
            None => shape.differences.push(format!(
                "{name}: column {} exists only on the source",
                c.name
            )),
            Some(d) => {
                if d.type_name != c.type_name {
                    shape.differences.push(format!(
                        "{name}: column {} is {} on the source and {} on the target",
                        c.name, c.type_name, d.type_name
                    ));
                }
                shape.columns.push(Column {
                    name: c.name.clone(),
                    types: [c.type_name.clone(), d.type_name.clone()],
                    generated: d.generated,
                    identity_always: d.identity_always,
                });
            }
        }
    }
    for d in &dst.columns {
        if !src.columns.iter().any(|c| c.name == d.name) {
            shape.differences.push(format!(
                "{name}: column {} exists only on the target",
                d.name
            ));
        }
    }
    // A table without a key compares as a whole (a multiset of rows: its digest).
    shape.comparable = shape
        .key
        .iter()
        .all(|k| shape.columns.iter().any(|c| &c.name == k));
    shape
}

impl TableShape {
    /// The relation to read on `side`: `ONLY` the table's own rows, unless it is partitioned
    /// (an inheritance parent's children are not its rows).
    pub fn from(&self, side: Side) -> String {
        if self.partitioned[side.index()] {
            format!("{} t", self.sql_name)
        } else {
            format!("ONLY {} t", self.sql_name)
        }
    }

    /// The quoted table name (for writes, which never need `ONLY`).
    pub fn sql_name(&self) -> &str {
        &self.sql_name
    }

    /// The type of a key column on `side`, to type key values read back from text.
    pub fn key_types(&self, side: Side) -> Vec<&str> {
        self.key
            .iter()
            .map(|k| {
                self.columns
                    .iter()
                    .find(|c| &c.name == k)
                    .map_or("text", |c| c.types[side.index()].as_str())
            })
            .collect()
    }

    /// The key columns of row `t`, quoted.
    pub fn key_columns(&self) -> Vec<String> {
        self.key
            .iter()
            .map(|k| format!("t.{}", quote_ident(k)))
            .collect()
    }

    /// The row's text over the columns both sides have: record output, which renders every type
    /// (in a comparable session, the same value the same way on both servers).
    pub fn row_text(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("t.{}", quote_ident(&c.name)))
            .collect();
        format!("ROW({})::text", cols.join(", "))
    }

    /// The key's text as a record (`(1,abc)`).
    pub fn key_text(&self) -> String {
        format!("ROW({})::text", self.key_columns().join(", "))
    }

    /// The columns to write when copying rows over (everything but generated columns).
    pub fn writable_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.generated)
    }

    /// Whether the two shapes have the same columns with the same types (the definitions did
    /// not change between two comparisons).
    pub fn same_columns(&self, other: &TableShape) -> bool {
        self.columns == other.columns && self.partitioned == other.partitioned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ColumnSpec;

    fn spec() -> TableSpec {
        TableSpec {
            no: 1,
            schema: "public".into(),
            name: "t".into(),
            key: vec!["id".into()],
            key_index: None,
            columns: vec![ColumnSpec {
                name: "id".into(),
                type_name: "integer".into(),
                generated: false,
                identity_always: false,
            }],
            partitioned: false,
        }
    }

    fn rel(cols: &[(&str, &str)]) -> Option<CatalogRelation> {
        Some(CatalogRelation {
            partitioned: false,
            columns: cols
                .iter()
                .map(|(n, ty)| CatalogColumn {
                    name: n.to_string(),
                    type_name: ty.to_string(),
                    generated: false,
                    identity_always: false,
                })
                .collect(),
        })
    }

    #[test]
    fn columns_on_one_side_and_type_changes_are_differences() {
        let shape = compare(
            &spec(),
            rel(&[("id", "integer"), ("v", "text"), ("n", "integer")]),
            rel(&[("id", "integer"), ("n", "bigint"), ("w", "integer")]),
        );
        assert_eq!(
            shape.differences,
            [
                "public.t: column v exists only on the source",
                "public.t: column n is integer on the source and bigint on the target",
                "public.t: column w exists only on the target",
            ]
        );
        assert!(shape.comparable);
        assert_eq!(shape.row_text(), "ROW(t.\"id\", t.\"n\")::text");
        assert_eq!(shape.key_types(Side::Target), ["integer"]);
        assert_eq!(shape.from(Side::Source), "ONLY \"public\".\"t\" t");
    }

    #[test]
    fn a_missing_table_or_key_column_cannot_be_compared() {
        let shape = compare(&spec(), rel(&[("id", "integer")]), None);
        assert_eq!(
            shape.differences,
            ["public.t: the table does not exist on the target"]
        );
        assert!(!shape.comparable);
        let shape = compare(&spec(), rel(&[("id", "integer")]), rel(&[("v", "text")]));
        assert!(!shape.comparable);
    }
}
