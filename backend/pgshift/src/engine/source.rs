//! Installing and removing change capture on the source database.

use sqlx::{Connection, PgConnection, Row};

use super::error::Context;
use super::{key_ops, quote_ident, quote_literal, row_format, EngineResult};
use crate::store::{MigrationRecord, TableSpec};

const INSTALL_SQL: &str = include_str!("../../../../sql/source/install.sql");
const TABLE_CAPTURE_SQL: &str = include_str!("../../../../sql/source/table_capture.sql");
const TABLE_TRIGGERS_SQL: &str = include_str!("../../../../sql/source/table_triggers.sql");
const STATEMENT_TRIGGERS_SQL: &str = include_str!("../../../../sql/source/statement_triggers.sql");

/// Whether capture for this migration is installed on the source.
pub async fn is_installed(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(conn)
        .await
        .context(|| "looking for the capture schema on the source".into())
}

/// Refuses a capture schema installed by an older pgshift: one whose events are JSON (its rows
/// cannot be read as record text), one without the statement triggers that keep nested changes
/// in order (table_capture.sql), or one whose capture knows pgshift's sessions by a plain
/// setting instead of a secret (pg/marker.rs).
pub async fn check_format(conn: &mut PgConnection, schema: &str) -> EngineResult<()> {
    let current: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
                         WHERE attrelid = to_regclass(format('%I.event', $1::text)) AND attname = 'ev_data')
            AND to_regproc(format('%I.statement_bound', $1::text)) IS NOT NULL
            AND to_regproc(format('%I.capture_row', $1::text)) IS NOT NULL
            AND to_regclass(format('%I.marker', $1::text)) IS NOT NULL",
    )
    .bind(schema)
    .fetch_one(conn)
    .await
    .context(|| "reading the capture schema's event format".into())?;
    if current {
        return Ok(());
    }
    Err(super::EngineError::invalid(
        "capture_outdated",
        "the capture on the source was installed by an older pgshift with another capture format; remove the migration and create it again",
    ))
}

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
pub(super) fn key_row(alias: &str, table: &TableSpec) -> String {
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
fn table_capture_sql(schema: &str, table: &TableSpec, ops: &[key_ops::ColumnOps]) -> String {
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
    expand_generations(TABLE_CAPTURE_SQL)
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
fn install_sql(schema: &str) -> String {
    INSTALL_SQL
        .replace("@piece_bytes@", &PIECE_BYTES.to_string())
        .replace("@statement_mark@", STATEMENT_MARK)
        .replace("@tag@", schema)
        .replace("@schema@", &quote_ident(schema))
}

/// The capture trigger's name on every relation of one table. It starts with '!' so that it
/// fires before the application's own AFTER row triggers (see table_triggers.sql).
fn trigger_name(schema: &str, table: &TableSpec, suffix: &str) -> String {
    quote_ident(&format!("!{schema}_{}{suffix}", table.no))
}

fn row_trigger_sql(schema: &str, table: &TableSpec) -> String {
    TABLE_TRIGGERS_SQL
        .replace("@trigger@", &trigger_name(schema, table, ""))
        .replace("@relation@", &table.sql_name())
        .replace("@no@", &table.no.to_string())
        .replace("@schema@", &quote_ident(schema))
}

/// The statement-level triggers of one relation of a table, and their names.
const STATEMENT_TRIGGERS: [&str; 2] = ["_truncate", "_end"];

fn statement_triggers_sql(schema: &str, table: &TableSpec, relation: &str) -> String {
    STATEMENT_TRIGGERS_SQL
        .replace("@truncate@", &trigger_name(schema, table, "_truncate"))
        .replace("@end@", &trigger_name(schema, table, "_end"))
        .replace("@relation@", relation)
        .replace("@no@", &table.no.to_string())
        .replace("@schema@", &quote_ident(schema))
}

/// Every partition below a partitioned table, quoted: statements aimed straight at a partition
/// fire only that partition's triggers.
async fn partitions(conn: &mut PgConnection, table: &TableSpec) -> EngineResult<Vec<String>> {
    let rows = sqlx::query(
        "SELECT format('%I.%I', n.nspname, c.relname)
           FROM pg_partition_tree($1::regclass) p
           JOIN pg_class c ON c.oid = p.relid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE p.level > 0",
    )
    .bind(table.sql_name())
    .fetch_all(&mut *conn)
    .await
    .context(|| format!("listing partitions of {}", table.display_name()))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

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
        return Err(super::EngineError::invalid(
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
        Some((relation, trigger, capture)) => Err(super::EngineError::invalid(
            "trigger_order",
            format!(
                "trigger {trigger:?} on {relation} fires before pgshift's capture {capture:?} (AFTER row triggers fire in name order), so a row it rewrites would reach the target in its older version; rename it so that it sorts after {capture:?}"
            ),
        )),
    }
}

/// A column change on the source, as the migration's error.
fn drift_error(table: &TableSpec, drift: &str) -> super::EngineError {
    super::EngineError::invalid(
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

/// Makes a capture trigger fire in sessions with `session_replication_role = replica` too
/// (restore jobs, ETL, other replication tools), which skip ordinary triggers. That needs the
/// table's owner; without it the trigger stays as it is, and the cutover's gates say which
/// tables such sessions could change unseen.
pub(crate) async fn fire_always(
    conn: &mut PgConnection,
    relation: &str,
    trigger: &str,
) -> EngineResult<()> {
    sqlx::query("SAVEPOINT pgshift_always")
        .execute(&mut *conn)
        .await
        .context(|| "opening a savepoint".into())?;
    let enabled = sqlx::query(&format!(
        "ALTER TABLE {relation} ENABLE ALWAYS TRIGGER {trigger}"
    ))
    .execute(&mut *conn)
    .await;
    let end = match enabled {
        Ok(_) => "RELEASE SAVEPOINT pgshift_always",
        Err(err) => {
            tracing::info!(%relation, error = %err, "capture cannot fire for replica sessions (not the table's owner)");
            "ROLLBACK TO SAVEPOINT pgshift_always"
        }
    };
    sqlx::query(end)
        .execute(&mut *conn)
        .await
        .context(|| "closing a savepoint".into())?;
    Ok(())
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
        Some(partition) => Err(super::EngineError::invalid(
            "partition_layout",
            format!(
                "partition {partition} of {} orders its columns differently from its parent; pgshift reads rows in the parent's order (recreate the partition with CREATE TABLE … PARTITION OF)",
                table.display_name()
            ),
        )
        .on_table(table.no)),
    }
}

/// Gives a partition that joined the table since install its statement triggers (row triggers
/// reach it by themselves), unless it still has them from an earlier time in the table.
pub(super) async fn add_statement_triggers(
    conn: &mut PgConnection,
    schema: &str,
    table: &TableSpec,
    relation: &str,
) -> EngineResult<()> {
    let present: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2)",
    )
    .bind(relation)
    .bind(format!("!{schema}_{}_truncate", table.no))
    .fetch_one(&mut *conn)
    .await
    .context(|| format!("looking for the capture triggers of {relation}"))?;
    if present {
        return Ok(());
    }
    super::pg::run_script(conn, &statement_triggers_sql(schema, table, relation))
        .await
        .context(|| format!("installing the statement capture triggers on {relation}"))?;
    for suffix in STATEMENT_TRIGGERS {
        fire_always(conn, relation, &trigger_name(schema, table, suffix)).await?;
    }
    Ok(())
}

/// Installs the queue, the tick function and a trigger set per table, and takes the first tick
/// inside the same transaction. Every event therefore belongs to a transaction that is not
/// visible in that first tick, so the worker starting from it misses nothing.
pub async fn install(conn: &mut PgConnection, migration: &MigrationRecord) -> EngineResult<()> {
    // Creating triggers waits for writers of each table; don't queue behind a long transaction forever.
    install_within(conn, migration, std::time::Duration::from_secs(30)).await
}

/// [`install`], waiting at most `lock_timeout` for each table's lock; a table that stays locked
/// fails the install naming it (error code `lock_timeout`).
pub async fn install_within(
    conn: &mut PgConnection,
    migration: &MigrationRecord,
    lock_timeout: std::time::Duration,
) -> EngineResult<()> {
    let installed = install_in_one(conn, migration, lock_timeout).await;
    match installed {
        Err(e) if e.sqlstate().as_deref() == Some("55P03") => Err(super::EngineError::invalid(
            "lock_timeout",
            format!(
                "installing capture on {}: a table stayed locked for over {} ms (another transaction holds it; see pg_stat_activity): {e}",
                migration.name,
                lock_timeout.as_millis()
            ),
        )),
        other => other,
    }
}

async fn install_in_one(
    conn: &mut PgConnection,
    migration: &MigrationRecord,
    lock_timeout: std::time::Duration,
) -> EngineResult<()> {
    let schema = migration.schema_name();
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening the install transaction on the source".into())?;
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    ))
    .execute(&mut *tx)
    .await
    .context(|| "setting lock_timeout".into())?;
    super::pg::run_script(&mut tx, &install_sql(&schema))
        .await
        .context(|| "installing the capture schema on the source".into())?;
    super::pg::marker::ensure(&mut tx, &schema).await?;
    for table in &migration.tables {
        check_partition_layout(&mut tx, table).await?;
        let ops = key_ops::key_operators(&mut tx, table).await?;
        super::pg::run_script(&mut tx, &table_capture_sql(&schema, table, &ops))
            .await
            .context(|| format!("installing capture functions for {}", table.display_name()))?;
        super::pg::run_script(&mut tx, &row_trigger_sql(&schema, table))
            .await
            .context(|| format!("installing the capture trigger on {}", table.display_name()))?;
        let mut relations = vec![table.sql_name()];
        if table.partitioned {
            relations.extend(partitions(&mut tx, table).await?);
        }
        for relation in relations {
            super::pg::run_script(&mut tx, &statement_triggers_sql(&schema, table, &relation))
                .await
                .context(|| format!("installing the statement capture triggers on {relation}"))?;
            // Partitions' row triggers are clones that follow the parent's setting.
            if relation == table.sql_name() {
                fire_always(&mut tx, &relation, &trigger_name(&schema, table, "")).await?;
            }
            for suffix in STATEMENT_TRIGGERS {
                fire_always(&mut tx, &relation, &trigger_name(&schema, table, suffix)).await?;
            }
        }
        if table.partitioned {
            super::partitions::record(&mut tx, &schema, table).await?;
        }
    }
    sqlx::query(&format!("SELECT {}.tick()", quote_ident(&schema)))
        .execute(&mut *tx)
        .await
        .context(|| "taking the first tick".into())?;
    tx.commit()
        .await
        .context(|| "committing the capture install".into())?;
    Ok(())
}

/// Removes everything this migration installed on the source. The trigger functions live in the
/// schema, so dropping it with CASCADE takes the triggers with it (no table ownership needed).
/// Dropping a trigger locks its table ACCESS EXCLUSIVE, and the application's queries queue behind
/// a waiting request: each attempt waits only briefly and the next comes after a pause (see
/// [`super::pg::LockRetry`]), until `cancel` fires or the attempts give up naming the sessions
/// that hold the tables.
pub async fn uninstall(
    conn: &mut PgConnection,
    schema: &str,
    cancel: Option<&tokio_util::sync::CancellationToken>,
) -> EngineResult<()> {
    // The tables carrying this schema's triggers, to name who holds them if it comes to that.
    let relations: Vec<sqlx::postgres::types::Oid> = sqlx::query_scalar(
        "SELECT DISTINCT t.tgrelid
           FROM pg_trigger t
           JOIN pg_proc p ON p.oid = t.tgfoid
           JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = $1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .context(|| "listing the tables that carry capture triggers".into())?;
    super::pg::run_with_short_locks(
        conn,
        &format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema)),
        "removing the capture schema from the source",
        &relations,
        super::pg::LockRetry::default(),
        cancel,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::{column_drift, expand_generations, unqualified};
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

    #[test]
    fn generation_blocks_repeat_per_event_table() {
        let sql = expand_generations("CASE\n@events[WHEN @gen@ THEN x_@gen@;\n]events@END");
        assert_eq!(
            sql,
            "CASE\nWHEN 0 THEN x_0;\nWHEN 1 THEN x_1;\nWHEN 2 THEN x_2;\nEND"
        );
    }
}
