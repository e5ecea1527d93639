//! Engine layer, source capture: the SQL that capture is installed with, rendered from the
//! templates in `sql/source/` for one migration's schema and one table: the queue and its
//! functions, each table's capture function and its row and statement triggers.

use crate::engine::{key_ops, quote_ident, quote_literal, row_format};
use crate::store::TableSpec;

const INSTALL_SQL: &str = include_str!("../../../../../sql/source/install.sql");
const TABLE_CAPTURE_SQL: &str = include_str!("../../../../../sql/source/table_capture.sql");
const KEYLESS_CAPTURE_SQL: &str =
    include_str!("../../../../../sql/source/table_capture_keyless.sql");
const TABLE_TRIGGERS_SQL: &str = include_str!("../../../../../sql/source/table_triggers.sql");
const STATEMENT_TRIGGERS_SQL: &str =
    include_str!("../../../../../sql/source/statement_triggers.sql");

/// Repeats each `@events[ ... ]events@` block once per event table, with `@gen@` set to 0, 1, 2.
fn expand_generations(template: &str) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find("@events[") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "@events[".len()..];
        let end = after
            .find("]events@")
            .expect("every @events[ block is closed");
        for gen in 0..3 {
            out.push_str(&after[..end].replace("@gen@", &gen.to_string()));
        }
        rest = &after[end + "]events@".len()..];
    }
    out.push_str(rest);
    out
}

/// `ROW(<alias>.c1, …)` over `columns`.
fn row_text<'a>(alias: &str, columns: impl Iterator<Item = &'a str>) -> String {
    let list = columns
        .map(|c| format!("{alias}.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    // A one-element row constructor needs ROW(...) to stay a row.
    format!("ROW({list})")
}

/// `ROW(…)` with every column of the table, the key columns read from `alias` and the others
/// NULL: the text of a 'D' event when the row's own text cannot be built (the target reads only
/// the key of a deleted row).
pub(in crate::engine) fn key_row(alias: &str, table: &TableSpec) -> String {
    let fields = table
        .columns
        .iter()
        .map(|c| {
            if table.key.contains(&c.name) {
                format!("{alias}.{}", quote_ident(&c.name))
            } else {
                "NULL".to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("ROW({fields})")
}

/// The capture function of one table. `ops` are the key's operators on the source: the
/// function finds a row by key when a nested change makes NEW too old to record.
pub(super) fn table_capture_sql(
    schema: &str,
    table: &TableSpec,
    ops: &[key_ops::ColumnOps],
) -> String {
    let key = || table.key.iter().map(String::as_str);
    let columns = |alias: &str| -> Vec<String> {
        key()
            .map(|c| format!("{alias}.{}", quote_ident(c)))
            .collect()
    };
    let settings = row_format::OUTPUT_SETTINGS
        .iter()
        .filter(|(name, _)| row_format::CAPTURE_SETTINGS.contains(name))
        .map(|(name, value)| format!("SET {name} = {}", quote_literal(value)))
        .collect::<Vec<_>>()
        .join("\n    ");
    // A table without a key is captured with whole-row identity (table_capture_keyless.sql).
    let template = if table.key.is_empty() {
        KEYLESS_CAPTURE_SQL
    } else {
        TABLE_CAPTURE_SQL
    };
    expand_generations(template)
        .replace(
            "@partition_seen@",
            if table.partitioned {
                PARTITION_SEEN
            } else {
                ""
            },
        )
        .replace("@statement_mark@", STATEMENT_MARK)
        .replace("@settings@", &settings)
        .replace("@old_key_row@", &key_row("OLD", table))
        .replace("@new_key_row@", &key_row("NEW", table))
        .replace("@old_key@", &row_text("OLD", key()))
        .replace("@new_key@", &row_text("NEW", key()))
        .replace(
            "@old_match@",
            &key_ops::key_equal(ops, &columns("x"), &columns("OLD")),
        )
        .replace(
            "@new_match@",
            &key_ops::key_equal(ops, &columns("x"), &columns("NEW")),
        )
        // A partitioned table is read whole (the row may have moved to another partition); an
        // inheritance parent alone, as its children are tables of their own.
        .replace("@scan@", &table.relation_only())
        .replace("@no@", &table.no.to_string())
        .replace("@table_literal@", &quote_literal(&table.sql_name()))
        .replace("@table_display@", &quote_literal(&table.display_name()))
        .replace("@table@", &table.sql_name())
        .replace("@tag@", schema)
        .replace("@schema@", &quote_ident(schema))
}

/// The mark of the client statement a trigger runs in (see statement_bound() in install.sql):
/// whole microseconds since the epoch, which no session setting changes. One expression for
/// the statement trigger that writes it and the captures that compare it.
const STATEMENT_MARK: &str =
    "(pg_catalog.date_part('epoch', pg_catalog.statement_timestamp()) * 1000000)::bigint::text";

/// For a partitioned table: a row written to a partition the source watch has not followed yet
/// leaves a note of that partition (once per transaction and partition), so the watch takes its
/// rows off the target even if the partition is dropped before the watch ever sees it.
const PARTITION_SEEN: &str = "
        IF TG_RELID::pg_catalog.text IS DISTINCT FROM pg_catalog.current_setting('pgshift.@tag@_part', true) THEN
            IF NOT EXISTS (SELECT 1 FROM @schema@.partition WHERE relid = TG_RELID)
               AND NOT EXISTS (SELECT 1 FROM @schema@.partition_seen WHERE relid = TG_RELID) THEN
                INSERT INTO @schema@.partition_seen (relid, table_no, name, bound)
                VALUES (TG_RELID, @no@, pg_catalog.format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME),
                        COALESCE(pg_catalog.pg_get_partition_constraintdef(TG_RELID), 'true'));
            END IF;
            PERFORM pg_catalog.set_config('pgshift.@tag@_part', TG_RELID::pg_catalog.text, true);
        END IF;";

/// The size of one piece of a value sent in parts (capture_row in install.sql): its event holds
/// the piece in base64, a third more, and the worker holds a chunk of such events at a time.
const PIECE_BYTES: usize = 16 << 20;

/// The install script of the migration's schema. `@tag@` names the transaction-local settings
/// of this migration: the schema name is pgshift's own (`pgshift_` and hex digits), a valid
/// setting name as it is.
pub(super) fn install_sql(schema: &str) -> String {
    INSTALL_SQL
        .replace("@piece_bytes@", &PIECE_BYTES.to_string())
        .replace("@statement_mark@", STATEMENT_MARK)
        .replace("@tag@", schema)
        .replace("@schema@", &quote_ident(schema))
}

/// The capture trigger's name on every relation of one table. It starts with '!' so that it
/// fires before the application's own AFTER row triggers (see table_triggers.sql).
pub(super) fn trigger_name(schema: &str, table: &TableSpec, suffix: &str) -> String {
    quote_ident(&format!("!{schema}_{}{suffix}", table.no))
}

pub(super) fn row_trigger_sql(schema: &str, table: &TableSpec) -> String {
    TABLE_TRIGGERS_SQL
        .replace("@trigger@", &trigger_name(schema, table, ""))
        .replace("@relation@", &table.sql_name())
        .replace("@no@", &table.no.to_string())
        .replace("@schema@", &quote_ident(schema))
}

/// The statement-level triggers of one relation of a table, and their names.
pub(super) const STATEMENT_TRIGGERS: [&str; 2] = ["_truncate", "_end"];

pub(super) fn statement_triggers_sql(schema: &str, table: &TableSpec, relation: &str) -> String {
    STATEMENT_TRIGGERS_SQL
        .replace("@truncate@", &trigger_name(schema, table, "_truncate"))
        .replace("@end@", &trigger_name(schema, table, "_end"))
        .replace("@relation@", relation)
        .replace("@no@", &table.no.to_string())
        .replace("@statement_mark@", STATEMENT_MARK)
        .replace("@tag@", schema)
        .replace("@schema@", &quote_ident(schema))
}

/// Removes one table's capture from the source in one statement: its functions with CASCADE
/// (which takes the row trigger with its partitions' clones and every statement trigger, no
/// table ownership needed), any statement trigger left from a capture installed before each
/// table had its own end function (that one needs the owner), and the partitions the source
/// watch followed for it.
pub(super) fn remove_table_sql(schema: &str, no: i32) -> String {
    let s = quote_ident(schema);
    let names = ["", "_truncate", "_end"]
        .iter()
        .map(|suffix| quote_literal(&format!("!{schema}_{no}{suffix}")))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "DO $pgshift$
         DECLARE
             t record;
         BEGIN
             DROP FUNCTION IF EXISTS {s}.capture_{no}() CASCADE;
             DROP FUNCTION IF EXISTS {s}.statement_bound_{no}() CASCADE;
             FOR t IN SELECT tgname, tgrelid::pg_catalog.regclass AS relation FROM pg_catalog.pg_trigger
                       WHERE tgname IN ({names}) AND NOT tgisinternal LOOP
                 EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', t.tgname, t.relation);
             END LOOP;
             DELETE FROM {s}.partition WHERE table_no = {no};
             DELETE FROM {s}.partition_seen WHERE table_no = {no};
         END
         $pgshift$"
    )
}

#[cfg(test)]
mod tests {
    use super::expand_generations;

    #[test]
    fn generation_blocks_repeat_per_event_table() {
        let sql = expand_generations("CASE\n@events[WHEN @gen@ THEN x_@gen@;\n]events@END");
        assert_eq!(
            sql,
            "CASE\nWHEN 0 THEN x_0;\nWHEN 1 THEN x_1;\nWHEN 2 THEN x_2;\nEND"
        );
    }
}
