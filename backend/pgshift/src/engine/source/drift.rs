//! Engine layer, source capture: noticing what changed on the source under a running
//! migration that capture cannot follow by itself: columns added, dropped, retyped or
//! reordered, generated columns that stop or start being generated, partitions whose columns
//! are out of their parent's order, and capture triggers disabled or outrun by the
//! application's own. Each is reported naming the table, and the worker stops applying.

use sqlx::PgConnection;

use crate::engine::error::Context;
use crate::engine::{EngineError, EngineResult};
use crate::store::{MigrationRecord, TableSpec};

/// A type's name without its schema: the same type prints qualified or not depending on the
/// session's search_path, which is not what drift is about.
fn unqualified(type_name: &str) -> &str {
    let mut depth = 0usize;
    let mut quoted = false;
    let mut cut = 0;
    for (i, c) in type_name.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' | '[' if !quoted => depth += 1,
            ')' | ']' if !quoted => depth = depth.saturating_sub(1),
            '.' if !quoted && depth == 0 => cut = i + 1,
            _ => {}
        }
    }
    &type_name[cut..]
}

/// Compares the source's columns of every migrated table, as they are now, with the columns the
/// capture records. Capture writes the recorded columns only, so a change would leave the target
/// silently behind: the first difference is returned as an error naming the table and column.
pub async fn check_columns(
    conn: &mut PgConnection,
    migration: &MigrationRecord,
) -> EngineResult<()> {
    for table in &migration.tables {
        let now: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT attname::text, format_type(atttypid, atttypmod), attgenerated <> '' FROM pg_attribute
              WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        )
        .bind(table.sql_name())
        .fetch_all(&mut *conn)
        .await
        .context(|| {
            format!(
                "reading the columns of {} on the source",
                table.display_name()
            )
        })?;
        check_partition_layout(&mut *conn, table).await?;
        if let Some((column, _, generated)) = now.iter().find(|(name, _, generated)| {
            table
                .columns
                .iter()
                .any(|c| &c.name == name && c.generated != *generated)
        }) {
            let what = if *generated { "became" } else { "is no longer" };
            return Err(drift_error(
                table,
                &format!(
                    "{}.{column} {what} a generated column on the source",
                    table.display_name()
                ),
            ));
        }
        let now: Vec<(String, String)> = now.into_iter().map(|(n, t, _)| (n, t)).collect();
        if let Some(drift) = column_drift(table, &now) {
            return Err(drift_error(table, &drift));
        }
    }
    check_triggers_enabled(conn, migration).await
}

/// A capture trigger that someone disabled (`ALTER TABLE … DISABLE TRIGGER USER` before a bulk
/// load) records nothing: name it rather than let the target fall behind unseen.
async fn check_triggers_enabled(
    conn: &mut PgConnection,
    migration: &MigrationRecord,
) -> EngineResult<()> {
    let schema = migration.schema_name();
    let disabled: Option<(String, String)> = sqlx::query_as(
        "SELECT t.tgrelid::regclass::text, t.tgname::text
           FROM pg_trigger t
           JOIN pg_proc p ON p.oid = t.tgfoid
           JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = $1 AND t.tgenabled = 'D'
            AND (p.proname LIKE 'capture\\_%' OR p.proname = 'statement_bound')
          LIMIT 1",
    )
    .bind(&schema)
    .fetch_optional(&mut *conn)
    .await
    .context(|| "reading the capture triggers' state".into())?;
    if let Some((relation, trigger)) = disabled {
        return Err(EngineError::invalid(
            "capture_disabled",
            format!(
                "pgshift's capture trigger {trigger:?} on {relation} is disabled on the source (ALTER TABLE … DISABLE TRIGGER): changes made meanwhile were not recorded; enable it again and resync the table"
            ),
        ));
    }
    // AFTER row triggers fire in name order: one that sorts before capture and rewrites its row
    // would have the older version recorded last.
    let earlier: Option<(String, String, String)> = sqlx::query_as(
        r#"SELECT o.tgrelid::regclass::text, o.tgname::text, c.tgname::text
             FROM pg_trigger c
             JOIN pg_proc p ON p.oid = c.tgfoid
             JOIN pg_namespace n ON n.oid = p.pronamespace
             JOIN pg_trigger o ON o.tgrelid = c.tgrelid AND o.oid <> c.oid AND NOT o.tgisinternal
             -- pgshift's own triggers (another migration's capture on a table attached here)
             -- are not the application's.
             JOIN pg_proc op ON op.oid = o.tgfoid
             JOIN pg_namespace opn ON opn.oid = op.pronamespace AND opn.nspname NOT LIKE 'pgshift\_%'
            WHERE n.nspname = $1 AND p.proname LIKE 'capture\_%' AND c.tgtype & 1 = 1
              AND o.tgtype & 1 = 1 AND o.tgtype & 66 = 0
              AND o.tgname COLLATE "C" < c.tgname COLLATE "C"
            LIMIT 1"#,
    )
    .bind(&schema)
    .fetch_optional(&mut *conn)
    .await
    .context(|| "reading the triggers on the source".into())?;
    match earlier {
        None => Ok(()),
        Some((relation, trigger, capture)) => Err(EngineError::invalid(
            "trigger_order",
            format!(
                "trigger {trigger:?} on {relation} fires before pgshift's capture {capture:?} (AFTER row triggers fire in name order), so a row it rewrites would reach the target in its older version; rename it so that it sorts after {capture:?}"
            ),
        )),
    }
}

/// A column change on the source, as the migration's error.
fn drift_error(table: &TableSpec, drift: &str) -> EngineError {
    EngineError::invalid(
        "schema_drift",
        format!("{drift}; pgshift stopped applying changes so that none is applied with the old column list"),
    )
    .on_table(table.no)
}

/// The first difference between the recorded columns and `now` (name, type), in words.
fn column_drift(table: &TableSpec, now: &[(String, String)]) -> Option<String> {
    let name = table.display_name();
    for (column, type_name) in now {
        match table.columns.iter().find(|c| &c.name == column) {
            None => return Some(format!("{name} gained column {column} on the source")),
            Some(c) if unqualified(&c.type_name) != unqualified(type_name) => {
                return Some(format!(
                    "{name}.{column} changed type on the source from {} to {type_name}",
                    c.type_name
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(c) = table
        .columns
        .iter()
        .find(|c| !now.iter().any(|(n, _)| n == &c.name))
    {
        return Some(format!("{name} lost column {} on the source", c.name));
    }
    let order_now: Vec<&str> = now.iter().map(|(n, _)| n.as_str()).collect();
    let order_then: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    (order_now != order_then).then(|| format!("{name}'s columns changed order on the source"))
}

/// Refuses partitions whose columns are not in their parent's order: capture writes a row in
/// the order of the relation it fired on, and the target reads it in the parent's order.
pub async fn check_partition_layout(
    conn: &mut PgConnection,
    table: &TableSpec,
) -> EngineResult<()> {
    if !table.partitioned {
        return Ok(());
    }
    let odd: Option<String> = sqlx::query_scalar(
        "WITH cols AS (
             SELECT p.relid, array_agg(a.attname::text ORDER BY a.attnum) AS names
               FROM pg_partition_tree($1::regclass) p
               JOIN pg_attribute a ON a.attrelid = p.relid AND a.attnum > 0 AND NOT a.attisdropped
              GROUP BY p.relid)
         SELECT c.relid::regclass::text FROM cols c, cols r
          WHERE r.relid = $1::regclass AND c.names <> r.names LIMIT 1",
    )
    .bind(table.sql_name())
    .fetch_optional(&mut *conn)
    .await
    .context(|| {
        format!(
            "reading the partitions' columns of {}",
            table.display_name()
        )
    })?;
    match odd {
        None => Ok(()),
        Some(partition) => Err(EngineError::invalid(
            "partition_layout",
            format!(
                "partition {partition} of {} orders its columns differently from its parent; pgshift reads rows in the parent's order (recreate the partition with CREATE TABLE … PARTITION OF)",
                table.display_name()
            ),
        )
        .on_table(table.no)),
    }
}

#[cfg(test)]
mod tests {
    use super::{column_drift, unqualified};
    use crate::store::{ColumnSpec, TableSpec};

    #[test]
    fn types_compare_without_their_schema() {
        assert_eq!(unqualified("public.mood"), "mood");
        assert_eq!(unqualified("\"my.schema\".mood"), "mood");
        assert_eq!(unqualified("numeric(12,2)"), "numeric(12,2)");
        assert_eq!(unqualified("integer[]"), "integer[]");
    }

    #[test]
    fn drift_names_the_table_and_column() {
        let column = |name: &str, type_name: &str| ColumnSpec {
            name: name.into(),
            type_name: type_name.into(),
            generated: false,
            identity_always: false,
        };
        let table = TableSpec {
            no: 1,
            schema: "public".into(),
            name: "t".into(),
            key: vec!["id".into()],
            key_index: None,
            columns: vec![column("id", "integer"), column("v", "mood")],
            partitioned: false,
        };
        let now = |cols: &[(&str, &str)]| -> Vec<(String, String)> {
            cols.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            column_drift(&table, &now(&[("id", "integer"), ("v", "public.mood")])),
            None
        );
        assert_eq!(
            column_drift(
                &table,
                &now(&[("id", "integer"), ("v", "mood"), ("w", "integer")])
            )
            .unwrap(),
            "public.t gained column w on the source"
        );
        assert_eq!(
            column_drift(&table, &now(&[("id", "integer")])).unwrap(),
            "public.t lost column v on the source"
        );
        assert!(
            column_drift(&table, &now(&[("id", "bigint"), ("v", "mood")]))
                .unwrap()
                .contains("changed type")
        );
    }
}
