//! Installing and removing change capture on the source database.

use sqlx::{Connection, PgConnection, Row};

use super::error::Context;
use super::{quote_ident, quote_literal, EngineResult};
use crate::store::{MigrationRecord, TableSpec};

const INSTALL_SQL: &str = include_str!("../../../../sql/source/install.sql");
const TABLE_CAPTURE_SQL: &str = include_str!("../../../../sql/source/table_capture.sql");
const TABLE_TRIGGERS_SQL: &str = include_str!("../../../../sql/source/table_triggers.sql");

/// Output settings a capture function pins, whatever the application's session set, for the
/// column types whose JSON text depends on them. Dates and timestamps are always ISO in JSON and
/// bytea in either output format reads back the same, so only these matter; each SET costs a
/// little on every statement, so a table pays only for the types it has.
fn capture_settings(table: &TableSpec) -> String {
    let has = |prefixes: &[&str]| {
        table
            .columns
            .iter()
            .any(|c| prefixes.iter().any(|p| c.type_name.starts_with(p)))
    };
    let mut settings = Vec::new();
    if has(&["real", "double precision"]) {
        settings.push("SET extra_float_digits = 3");
    }
    if has(&["interval"]) {
        settings.push("SET intervalstyle = 'postgres'");
    }
    settings.join(" ")
}

/// Whether capture for this migration is installed on the source.
pub async fn is_installed(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(conn)
        .await
        .context(|| "looking for the capture schema on the source".into())
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

fn table_capture_sql(schema: &str, table: &TableSpec) -> String {
    let key_pairs = table
        .key
        .iter()
        .map(|k| format!("{}, o.{}", quote_literal(k), quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let cols = |alias: &str| {
        let list = table
            .key
            .iter()
            .map(|k| format!("{alias}.{}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ");
        // A one-element row constructor needs ROW(...) to stay a row.
        format!("ROW({list})")
    };
    let floats: Vec<String> = table
        .columns
        .iter()
        .filter(|c| c.type_name.starts_with("real") || c.type_name.starts_with("double precision"))
        .map(|c| {
            format!(
                "{}, n.{}::text",
                quote_literal(&c.name),
                quote_ident(&c.name)
            )
        })
        .collect();
    let row = if floats.is_empty() {
        "to_jsonb(n.*)".to_string()
    } else {
        format!("to_jsonb(n.*) || jsonb_build_object({})", floats.join(", "))
    };
    expand_generations(TABLE_CAPTURE_SQL)
        .replace("@row@", &row)
        .replace("@settings@", &capture_settings(table))
        .replace("@old_key_pairs@", &key_pairs)
        .replace("@new_key_cols@", &cols("n"))
        .replace("@old_key_cols@", &cols("o"))
        .replace("@no@", &table.no.to_string())
        .replace("@table@", &table.sql_name())
        .replace("@schema@", &quote_ident(schema))
}

fn triggers_sql(schema: &str, table: &TableSpec, relation: &str) -> String {
    TABLE_TRIGGERS_SQL
        .replace("@trigger@", &format!("{schema}_{}", table.no))
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
        let mut relations = vec![table.sql_name()];
        if table.partitioned {
            relations.extend(partitions(&mut tx, table).await?);
        }
        for relation in relations {
            super::pg::run_script(&mut tx, &triggers_sql(&schema, table, &relation))
                .await
                .context(|| format!("installing capture triggers on {relation}"))?;
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
