//! Engine layer: the form rows travel in: PostgreSQL's own record text, written on the source
//! by the capture function (`ROW(NEW.c1, …)::text`) and read on the target through a composite
//! type with the same fields ("the row type"). Record output and input round-trip every value
//! of every type once the settings that shape the text are the same on both ends, which this
//! module pins.
//!
//! Each replicated table gets two objects in pgshift's schema on the target:
//! - `row_<no>`: a composite type with the migration's columns in the source's order, each of
//!   the *target* column's type (domains resolved to their base type, so a NOT NULL domain never
//!   fails while a row is only being read);
//! - `tombstone_<no>`: the keys the worker deleted while the table copies, as typed values, so
//!   they compare with the key's own equality (never as text rendered in two sessions).

use sqlx::{PgConnection, Row};

use super::error::Context;
use super::{quote_ident, EngineError, EngineResult};
use crate::store::TableSpec;

/// Settings that shape the text of a value, pinned wherever pgshift writes or reads row text.
/// ISO dates read back the same under any DateStyle order; `postgres` intervals are unambiguous;
/// three extra float digits give the shortest exact form; the C locale's money format is the
/// same on every server; UTC makes equal timestamps the same text.
pub const OUTPUT_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
    ("xmloption", "content"),
];

/// The settings the capture function pins, of [`OUTPUT_SETTINGS`]: those without which a value's
/// text could read back as another value (a DMY date, a rounded float, an ambiguous interval,
/// money in another locale's format). A timestamptz carries its offset and bytea reads back in
/// either output format, so TimeZone and bytea_output are left alone: each pinned setting costs
/// the application about a third of a microsecond per row written.
pub const CAPTURE_SETTINGS: &[&str] = &[
    "DateStyle",
    "IntervalStyle",
    "extra_float_digits",
    "lc_monetary",
];

/// [`OUTPUT_SETTINGS`] as startup options (`-c name=value`, spaces escaped), so every session
/// pgshift opens writes and reads row text the same way whatever the database's or role's own
/// defaults say: the copy's COPY text and the worker's record input depend on them.
pub fn startup_options() -> Vec<(&'static str, String)> {
    OUTPUT_SETTINGS
        .iter()
        .map(|(name, value)| (*name, value.replace('\\', "\\\\").replace(' ', "\\ ")))
        .collect()
}

/// The quoted name of a table's row type on the target.
pub fn row_type(schema: &str, table: &TableSpec) -> String {
    format!(
        "{}.{}",
        quote_ident(schema),
        quote_ident(&format!("row_{}", table.no))
    )
}

/// The quoted name of a table's tombstone table on the target.
pub fn tombstone_table(schema: &str, table: &TableSpec) -> String {
    format!(
        "{}.{}",
        quote_ident(schema),
        quote_ident(&format!("tombstone_{}", table.no))
    )
}

/// Positional names of the row type's fields (`c0`, `c1`, …): never clash with anything.
pub fn field(index: usize) -> String {
    format!("c{index}")
}

/// The field holding a column, by the column's name.
pub fn field_of(table: &TableSpec, column: &str) -> String {
    let index = table
        .columns
        .iter()
        .position(|c| c.name == column)
        .expect("a table's key and writable columns are among its columns");
    field(index)
}

/// Creates (or re-creates, following the target's current column types) the row type and the
/// tombstone table of every table. A column the target lacks is named in the error. Also gives
/// the target's schema pgshift's session marker and marks this session (the worker's), so that
/// a reverse migration's capture armed here later knows the worker's writes for pgshift's own
/// (see pg/marker.rs).
pub async fn prepare_target(
    conn: &mut PgConnection,
    schema: &str,
    tables: &[TableSpec],
) -> EngineResult<()> {
    super::pg::marker::ensure(conn, schema).await?;
    for table in tables {
        let mut fields = Vec::with_capacity(table.columns.len());
        for (i, column) in table.columns.iter().enumerate() {
            let row = sqlx::query(
                "SELECT format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
                                    CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END),
                        CASE WHEN a.attcollation <> 0 THEN format(' COLLATE %I.%I', cn.nspname, co.collname) ELSE '' END
                   FROM pg_attribute a
                   JOIN pg_type t ON t.oid = a.atttypid
                   LEFT JOIN pg_collation co ON co.oid = a.attcollation
                   LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
                  WHERE a.attrelid = $1::regclass AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            )
            .bind(table.sql_name())
            .bind(&column.name)
            .fetch_optional(&mut *conn)
            .await
            .context(|| format!("reading the columns of {} on the target", table.display_name()))?;
            let Some(row) = row else {
                return Err(EngineError::invalid(
                    "target_columns_differ",
                    format!(
                        "{} has no column {} on the target",
                        table.display_name(),
                        column.name
                    ),
                ));
            };
            let type_name: String = row.get(0);
            let collate: String = row.get(1);
            fields.push((field(i), format!("{type_name}{collate}")));
        }
        let row_type = row_type(schema, table);
        let definition = fields
            .iter()
            .map(|(f, t)| format!("{f} {t}"))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(&format!("DROP TYPE IF EXISTS {row_type}"))
            .execute(&mut *conn)
            .await
            .context(|| format!("replacing the row type of {}", table.display_name()))?;
        sqlx::query(&format!("CREATE TYPE {row_type} AS ({definition})"))
            .execute(&mut *conn)
            .await
            .context(|| format!("creating the row type of {}", table.display_name()))?;

        if table.key.is_empty() {
            // Without a key there is nothing to tombstone: events are held while it copies.
            super::apply::keyless::prepare_held(conn, schema, table).await?;
            continue;
        }
        // The tombstone table keeps the key columns' own types and collations, so equality is
        // the key's equality (1.0 = 1.00, citext, nondeterministic collations).
        let keys = table
            .key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ");
        let tombstones = tombstone_table(schema, table);
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&tombstones)
            .fetch_one(&mut *conn)
            .await
            .context(|| "looking for a tombstone table".into())?;
        if !exists {
            sqlx::query(&format!(
                "CREATE TABLE {tombstones} AS SELECT {keys} FROM ONLY {} WITH NO DATA",
                table.sql_name()
            ))
            .execute(&mut *conn)
            .await
            .context(|| format!("creating the tombstone table of {}", table.display_name()))?;
            sqlx::query(&format!(
                "ALTER TABLE {tombstones} ADD PRIMARY KEY ({keys})"
            ))
            .execute(&mut *conn)
            .await
            .context(|| format!("keying the tombstone table of {}", table.display_name()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_escape_spaces() {
        let options = startup_options();
        assert!(options.contains(&("DateStyle", "ISO,\\ MDY".to_string())));
        assert_eq!(options.len(), OUTPUT_SETTINGS.len());
    }
}
