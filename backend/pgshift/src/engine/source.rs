//! Installing and removing change capture on the source database.

use sqlx::{Connection, PgConnection, Row};

use super::error::Context;
use super::{quote_ident, quote_literal, row_format, EngineResult};
use crate::store::{MigrationRecord, TableSpec};

const INSTALL_SQL: &str = include_str!("../../../../sql/source/install.sql");
const TABLE_CAPTURE_SQL: &str = include_str!("../../../../sql/source/table_capture.sql");
const TABLE_TRIGGERS_SQL: &str = include_str!("../../../../sql/source/table_triggers.sql");
const TRUNCATE_TRIGGER_SQL: &str = include_str!("../../../../sql/source/truncate_trigger.sql");

/// Whether capture for this migration is installed on the source.
pub async fn is_installed(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(conn)
        .await
        .context(|| "looking for the capture schema on the source".into())
}

/// Refuses a capture schema installed by an older pgshift, whose events are JSON: its rows
/// cannot be read as record text.
pub async fn check_format(conn: &mut PgConnection, schema: &str) -> EngineResult<()> {
    let current: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
                         WHERE attrelid = to_regclass(format('%I.event', $1::text)) AND attname = 'ev_data')",
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
        "the capture on the source was installed by an older pgshift that recorded rows as JSON; remove the migration and create it again",
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

/// `ROW(<alias>.c1, …)::text` over `columns`: the record text of those columns in that order.
fn row_text<'a>(alias: &str, columns: impl Iterator<Item = &'a str>) -> String {
    let list = columns
        .map(|c| format!("{alias}.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    // A one-element row constructor needs ROW(...) to stay a row.
    format!("ROW({list})")
}

fn table_capture_sql(schema: &str, table: &TableSpec) -> String {
    let all = || table.columns.iter().map(|c| c.name.as_str());
    let key = || table.key.iter().map(String::as_str);
    let settings = row_format::OUTPUT_SETTINGS
        .iter()
        .map(|(name, value)| format!("SET {name} = {}", quote_literal(value)))
        .collect::<Vec<_>>()
        .join("\n    ");
    expand_generations(TABLE_CAPTURE_SQL)
        .replace("@settings@", &settings)
        .replace("@new_row@", &format!("{}::text", row_text("NEW", all())))
        .replace("@old_row@", &format!("{}::text", row_text("OLD", all())))
        .replace("@old_key@", &row_text("OLD", key()))
        .replace("@new_key@", &row_text("NEW", key()))
        .replace("@no@", &table.no.to_string())
        .replace("@table@", &table.sql_name())
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

fn truncate_trigger_sql(schema: &str, table: &TableSpec, relation: &str) -> String {
    TRUNCATE_TRIGGER_SQL
        .replace("@trigger@", &trigger_name(schema, table, "_truncate"))
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

/// Makes a capture trigger fire in sessions with `session_replication_role = replica` too
/// (restore jobs, ETL, other replication tools), which skip ordinary triggers. That needs the
/// table's owner; without it the trigger stays as it is, and the cutover's gates say which
/// tables such sessions could change unseen.
async fn fire_always(conn: &mut PgConnection, relation: &str, trigger: &str) -> EngineResult<()> {
    sqlx::query("SAVEPOINT pgshift_always")
        .execute(&mut *conn)
        .await
        .context(|| "opening a savepoint".into())?;
    let enabled = sqlx::query(&format!("ALTER TABLE {relation} ENABLE ALWAYS TRIGGER {trigger}"))
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

/// Gives partitions created or attached since install their TRUNCATE capture trigger (row
/// triggers reach them by themselves). Returns the partitions it covered. A partition whose
/// lock is busy is tried again on the next call: the short lock timeout keeps the
/// application's writers from queueing behind pgshift.
pub async fn capture_new_partitions(
    conn: &mut PgConnection,
    migration: &MigrationRecord,
) -> EngineResult<Vec<String>> {
    let schema = migration.schema_name();
    let mut covered = Vec::new();
    for table in migration.tables.iter().filter(|t| t.partitioned) {
        let name = format!("!{schema}_{}_truncate", table.no);
        let missing: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', n.nspname, c.relname)
               FROM pg_partition_tree($1::regclass) p
               JOIN pg_class c ON c.oid = p.relid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE p.level > 0
                AND NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = p.relid AND g.tgname = $2)",
        )
        .bind(table.sql_name())
        .bind(&name)
        .fetch_all(&mut *conn)
        .await
        .context(|| format!("looking for new partitions of {}", table.display_name()))?;
        for relation in missing {
            let mut tx = conn
                .begin()
                .await
                .context(|| "opening a transaction on the source".into())?;
            sqlx::query("SET LOCAL lock_timeout = '100ms'")
                .execute(&mut *tx)
                .await
                .context(|| "setting lock_timeout".into())?;
            let created =
                super::pg::run_script(&mut tx, &truncate_trigger_sql(&schema, table, &relation))
                    .await;
            if created.is_ok() {
                fire_always(&mut tx, &relation, &quote_ident(&name)).await?;
            }
            match created {
                Ok(()) => {
                    tx.commit()
                        .await
                        .context(|| format!("capturing truncates of {relation}"))?;
                    covered.push(relation);
                }
                Err(err) => {
                    tracing::debug!(%relation, error = %err, "new partition busy; capturing its truncates later");
                }
            }
        }
    }
    Ok(covered)
}

/// Installs the queue, the tick function and a trigger set per table, and takes the first tick
/// inside the same transaction. Every event therefore belongs to a transaction that is not
/// visible in that first tick, so the worker starting from it misses nothing.
pub async fn install(conn: &mut PgConnection, migration: &MigrationRecord) -> EngineResult<()> {
    let schema = migration.schema_name();
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening the install transaction on the source".into())?;
    // Creating triggers waits for writers of each table; don't queue behind a long transaction forever.
    sqlx::query("SET LOCAL lock_timeout = '30s'")
        .execute(&mut *tx)
        .await
        .context(|| "setting lock_timeout".into())?;
    super::pg::run_script(
        &mut tx,
        &INSTALL_SQL.replace("@schema@", &quote_ident(&schema)),
    )
    .await
    .context(|| "installing the capture schema on the source".into())?;
    for table in &migration.tables {
        super::pg::run_script(&mut tx, &table_capture_sql(&schema, table))
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
            super::pg::run_script(&mut tx, &truncate_trigger_sql(&schema, table, &relation))
                .await
                .context(|| format!("installing the truncate capture trigger on {relation}"))?;
            let name = if relation == table.sql_name() {
                trigger_name(&schema, table, "")
            } else {
                // Partitions' row triggers are clones that follow the parent's setting.
                String::new()
            };
            for trigger in [name, trigger_name(&schema, table, "_truncate")] {
                if !trigger.is_empty() {
                    fire_always(&mut tx, &relation, &trigger).await?;
                }
            }
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
pub async fn uninstall(conn: &mut PgConnection, schema: &str) -> EngineResult<()> {
    sqlx::query("SET lock_timeout = '30s'")
        .execute(&mut *conn)
        .await
        .context(|| "setting lock_timeout".into())?;
    sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quote_ident(schema)
    ))
    .execute(&mut *conn)
    .await
    .context(|| "removing the capture schema from the source".into())?;
    sqlx::query("RESET lock_timeout")
        .execute(&mut *conn)
        .await
        .context(|| "resetting lock_timeout".into())?;
    Ok(())
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
