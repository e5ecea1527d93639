//! Engine layer: the checks on each table's key before a migration installs anything: its
//! comparison operators are found in pgshift's sessions, it orders and compares text alike on both
//! sides, and it is not deferrable on the source.

use sqlx::PgConnection;

use crate::engine::error::Context;
use crate::engine::{EngineError, EngineResult};
use crate::store::{ColumnSpec, TableSpec};

/// Checks that every table's key can be compared in pgshift's sessions, as the copy's chunks and
/// the apply's key matches do. Those sessions pin `search_path = pg_catalog, pg_temp` (see
/// [`crate::engine::pg::SESSION_SETTINGS`]), so the operators of a type that lives elsewhere (an
/// extension's `ltree` in `public`) are found only when the type casts implicitly to a built-in
/// one (`citext` to `text`). Such keys are refused here rather than failing on every attempt.
pub async fn check_keys_comparable(
    conn: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<()> {
    // A table without a key compares whole rows as text (apply/keyless.rs): nothing to check.
    for t in tables.iter().filter(|t| !t.key.is_empty()) {
        let key: Vec<&ColumnSpec> = t
            .key
            .iter()
            .filter_map(|k| t.columns.iter().find(|c| &c.name == k))
            .collect();
        let nulls = key
            .iter()
            .map(|c| format!("NULL::{}", c.type_name))
            .collect::<Vec<_>>()
            .join(", ");
        let row = format!("ROW({nulls})");
        let sql = format!("SELECT {row} = {row}, {row} < {row}, {row} <= {row}, {row} > {row}");
        match sqlx::query(&sql).fetch_one(&mut *conn).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42883") => {
                let columns = key
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.type_name))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(EngineError::invalid(
                    "key_type_unsupported",
                    format!(
                        "table {}: its primary key ({columns}) has a type whose comparison operators live outside pg_catalog, where pgshift does not look them up (its sessions pin search_path = pg_catalog, pg_temp so that a database owner cannot have pgshift's role run their code); such keys are not supported yet: leave the table out with table patterns",
                        t.display_name()
                    ),
                ));
            }
            Err(e) => {
                return Err(EngineError::Database {
                    context: format!("checking the key of {}", t.display_name()),
                    source: e,
                })
            }
        }
    }
    Ok(())
}

/// Strings whose order and equality tell collations apart: case, accents, ligatures,
/// punctuation and digits sort differently under C, libc and ICU locales, and a
/// case-insensitive (nondeterministic) collation finds some of them equal.
const COLLATION_PROBES: &[&str] = &[
    "a", "A", "b", "B", "ä", "Ä", "z", "Z", "æ", "ß", "ss", "_x", "-x", " a", "a b", "ab", "1",
    "10", "9", "é", "e", "f", "ø", "o", "ǅ", "i", "I", "ı", "İ",
];

/// How one side orders and equates the probes under each collatable key column of `table`:
/// the column's own collation (a named one, or the database's default) applied to the column's
/// own type.
async fn key_collation_behaviour(
    conn: &mut PgConnection,
    table: &TableSpec,
) -> EngineResult<Vec<(String, String)>> {
    let columns: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                CASE WHEN a.attcollation = 100 THEN NULL
                     ELSE format('%I.%I', n.nspname, c.collname) END
           FROM pg_attribute a
           JOIN pg_collation c ON c.oid = a.attcollation
           JOIN pg_namespace n ON n.oid = c.collnamespace
          WHERE a.attrelid = $1::regclass AND a.attname = ANY($2) AND a.attcollation <> 0",
    )
    .bind(table.sql_name())
    .bind(&table.key)
    .fetch_all(&mut *conn)
    .await
    .context(|| format!("reading the key collations of {}", table.display_name()))?;
    let mut out = Vec::new();
    for (column, type_name, collation) in columns {
        let collate = collation
            .map(|c| format!(" COLLATE {c}"))
            .unwrap_or_default();
        let behaviour: String = sqlx::query_scalar(&format!(
            "SELECT string_agg(x::text, '|' ORDER BY x::{type_name}{collate}, x COLLATE \"C\")
                    || ' distinct ' || count(DISTINCT x::{type_name}{collate})
               FROM unnest($1::text[]) AS x"
        ))
        .bind(COLLATION_PROBES)
        .fetch_one(&mut *conn)
        .await
        .context(|| {
            format!(
                "comparing the collation of {}.{column}",
                table.display_name()
            )
        })?;
        out.push((column, behaviour));
    }
    Ok(out)
}

/// Refuses a table whose key columns order or compare text differently on the two sides (a
/// different collation, or the same name under another locale or library version). The copy
/// cuts key ranges in the source's order and looks them up in the target's, and verification
/// and repair compare ranges: under two orders a range means different rows on each side.
pub async fn check_key_collations(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<()> {
    for t in tables {
        let source = key_collation_behaviour(src, t).await?;
        let target = key_collation_behaviour(dst, t).await?;
        for (column, behaviour) in &source {
            let Some((_, other)) = target.iter().find(|(c, _)| c == column) else {
                continue;
            };
            if other != behaviour {
                return Err(EngineError::invalid(
                    "key_collation_differs",
                    format!(
                        "table {}: key column {column} orders or compares text differently on the two sides (another collation, or the same collation from another locale library); give it the same collation on the target, or leave the table out",
                        t.display_name()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses tables whose primary key is deferrable on the source. Capture records each row as
/// it changes; under a deferrable key one statement may move a key onto another row's before
/// that row moves on (`id = id + 1`), and replaying such a statement row by row can delete the
/// newcomer when it equals the row that left: the target would silently lose rows.
pub async fn check_keys_immediate(
    conn: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<()> {
    let mut deferrable = Vec::new();
    for t in tables {
        let key: Option<String> = sqlx::query_scalar(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p' AND condeferrable",
        )
        .bind(t.sql_name())
        .fetch_optional(&mut *conn)
        .await
        .context(|| format!("reading the key of {}", t.display_name()))?;
        if let Some(name) = key {
            deferrable.push(format!("{} ({name})", t.display_name()));
        }
    }
    if deferrable.is_empty() {
        return Ok(());
    }
    Err(EngineError::invalid(
        "key_deferrable",
        format!(
            "deferrable primary key on {}: a statement that shifts keys under a deferrable key cannot be replayed row by row without losing rows; make the key NOT DEFERRABLE on the source (ALTER TABLE … ALTER CONSTRAINT … NOT DEFERRABLE) or leave the table out with table patterns",
            deferrable.join(", ")
        ),
    ))
}
