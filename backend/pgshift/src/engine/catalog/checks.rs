//! Engine layer: the checks each side must pass before a migration installs anything: the source
//! lets pgshift install capture and read every row; the target has every table with the same
//! columns and key, empty, and lets pgshift write it; row-level security hides no row from
//! pgshift's role on either side.

use sqlx::{PgConnection, Row};

use super::keys::{check_keys_comparable, check_keys_immediate};
use super::user_tables;
use crate::engine::cutover::sequences;
use crate::engine::error::Context;
use crate::engine::{quote_ident, EngineError, EngineResult};
use crate::store::{ColumnSpec, TableSpec};

/// The table privileges among `privileges` the connected role lacks on `tables`, each group of
/// tables lacking the same ones as the grant that gives them to `user`: `SELECT, TRIGGER on
/// "public"."a", "public"."b" (GRANT SELECT, TRIGGER ON TABLE "public"."a", "public"."b" TO
/// "pgshift")`.
pub(crate) async fn missing_table_privileges(
    conn: &mut PgConnection,
    tables: &[TableSpec],
    privileges: &[&str],
    user: &str,
) -> EngineResult<Vec<String>> {
    // Tables by the privileges they lack, in the order first met.
    let mut groups: Vec<(Vec<&str>, Vec<String>)> = Vec::new();
    for t in tables {
        let mut lacking = Vec::new();
        for p in privileges {
            let ok: bool = sqlx::query_scalar("SELECT has_table_privilege($1::regclass, $2)")
                .bind(t.sql_name())
                .bind(*p)
                .fetch_one(&mut *conn)
                .await
                .context(|| format!("checking {p} on {}", t.display_name()))?;
            if !ok {
                lacking.push(*p);
            }
        }
        if lacking.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(l, _)| *l == lacking) {
            Some((_, names)) => names.push(t.sql_name()),
            None => groups.push((lacking, vec![t.sql_name()])),
        }
    }
    Ok(groups
        .into_iter()
        .map(|(lacking, names)| {
            let (lacking, names) = (lacking.join(", "), names.join(", "));
            format!(
                "{lacking} on {names} (GRANT {lacking} ON TABLE {names} TO {})",
                quote_ident(user)
            )
        })
        .collect())
}

/// Every name pgshift reads or writes is qualified by its schema, which the role must be
/// allowed to use: the schemas of `tables` it may not, each with the grant to add.
async fn schemas_without_usage(
    conn: &mut PgConnection,
    tables: &[TableSpec],
    user: &str,
) -> EngineResult<Vec<String>> {
    let schemas: Vec<String> = tables.iter().map(|t| t.schema.clone()).collect();
    let closed: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_catalog.pg_namespace n
          WHERE n.nspname = ANY($1) AND NOT has_schema_privilege(n.oid, 'USAGE')
          ORDER BY 1",
    )
    .bind(&schemas)
    .fetch_all(&mut *conn)
    .await
    .context(|| "checking schema privileges".into())?;
    Ok(closed
        .into_iter()
        .map(|schema| {
            format!(
                "USAGE on schema {schema:?} (GRANT USAGE ON SCHEMA {} TO {})",
                quote_ident(&schema),
                quote_ident(user)
            )
        })
        .collect())
}

/// Refuses, naming the grants, a role that may not use the schemas of `tables` on `side`
/// ("source" or "target"): nothing about those tables can be read before that.
pub async fn check_schema_usage(
    conn: &mut PgConnection,
    tables: &[TableSpec],
    side: &str,
) -> EngineResult<()> {
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await
        .context(|| "reading the role's name".into())?;
    let missing = schemas_without_usage(conn, tables, &user).await?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(EngineError::MissingPrivilege(format!(
        "the {side} role {user:?} lacks: {}",
        missing.join(", ")
    )))
}

/// What the connected role may do in the connected database as a whole.
struct DatabaseAccess {
    user: String,
    database: String,
    /// pgshift creates its schema on both sides.
    create: bool,
    /// The copy stages each chunk in a temporary table on the target.
    temp: bool,
}

async fn database_access(conn: &mut PgConnection) -> EngineResult<DatabaseAccess> {
    let row = sqlx::query(
        "SELECT current_user::text, current_database()::text,
                has_database_privilege(current_database(), 'CREATE'),
                has_database_privilege(current_database(), 'TEMP')",
    )
    .fetch_one(&mut *conn)
    .await
    .context(|| "checking database privileges".into())?;
    Ok(DatabaseAccess {
        user: row.get(0),
        database: row.get(1),
        create: row.get(2),
        temp: row.get(3),
    })
}

/// The tables whose row-level security applies to the connected role: it is neither superuser
/// nor BYPASSRLS, and not the owner (or the owner of a table with FORCE ROW LEVEL SECURITY).
/// pgshift's sessions run with `row_security = off`, so a query on such a table fails instead of
/// seeing only the rows a policy lets through.
async fn tables_hidden_by_row_security(
    conn: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Vec<String>> {
    let names: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    sqlx::query_scalar(
        "SELECT format('%s.%s', n.nspname, c.relname)
           FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_roles r ON r.rolname = current_user
          WHERE c.oid = ANY($1::text[]::regclass[])
            AND c.relrowsecurity
            AND NOT (r.rolsuper OR r.rolbypassrls
                     OR (pg_has_role(c.relowner, 'USAGE') AND NOT c.relforcerowsecurity))
          ORDER BY 1",
    )
    .bind(names)
    .fetch_all(&mut *conn)
    .await
    .context(|| "checking row-level security".into())
}

/// What is missing when row-level security applies to pgshift's role on `hidden`, and how to
/// grant it.
fn row_security_missing(hidden: &[String], user: &str) -> String {
    format!(
        "BYPASSRLS: row-level security on {} applies to this role, and pgshift never works on a filtered view of a table (its sessions run with row_security = off, so these tables would fail); run ALTER ROLE {} BYPASSRLS, or run pgshift as the tables' owner (for tables without FORCE ROW LEVEL SECURITY)",
        hidden.join(", "),
        quote_ident(user)
    )
}

/// Checks that the source lets pgshift install capture and read every row of the tables.
pub async fn check_source(conn: &mut PgConnection, tables: &[TableSpec]) -> EngineResult<()> {
    check_schema_usage(conn, tables, "source").await?;
    check_keys_comparable(conn, tables).await?;
    check_keys_immediate(conn, tables).await?;
    let access = database_access(conn).await?;
    let (user, db) = (&access.user, &access.database);
    let mut missing = missing_table_privileges(conn, tables, &["SELECT", "TRIGGER"], user).await?;
    // The cutover reads the sequences here to move the target's forward.
    missing.extend(sequences::missing_privileges(conn, tables, &["SELECT"], user).await?);
    if !access.create {
        missing.insert(
            0,
            format!(
                "CREATE on database {db:?} (GRANT CREATE ON DATABASE {} TO {})",
                quote_ident(db),
                quote_ident(user)
            ),
        );
    }
    let hidden = tables_hidden_by_row_security(conn, tables).await?;
    if !hidden.is_empty() {
        missing.push(row_security_missing(&hidden, user));
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(EngineError::MissingPrivilege(format!(
        "the source role {user:?} lacks: {}",
        missing.join(", ")
    )))
}

/// Checks that every table exists on the target with the same columns and key, that pgshift may
/// write it, and that it is empty (the copy fills it).
pub async fn check_target(conn: &mut PgConnection, tables: &[TableSpec]) -> EngineResult<()> {
    check_schema_usage(conn, tables, "target").await?;
    let found = user_tables(conn).await?;
    for t in tables {
        let Some(target) = found
            .iter()
            .find(|f| f.schema == t.schema && f.name == t.name)
        else {
            return Err(EngineError::invalid(
                "target_table_missing",
                format!("table {} does not exist in the target database; create the schema on the target first (for example pg_dump --schema-only)", t.display_name()),
            ));
        };
        let describe = |cols: &[ColumnSpec]| {
            let mut v: Vec<(String, String, bool)> = cols
                .iter()
                .map(|c| (c.name.clone(), c.type_name.clone(), c.generated))
                .collect();
            v.sort();
            v
        };
        let (src, dst) = (describe(&t.columns), describe(&target.columns));
        if src != dst {
            let only_src: Vec<String> = src
                .iter()
                .filter(|c| !dst.contains(c))
                .map(|c| format!("{} {}", c.0, c.1))
                .collect();
            let only_dst: Vec<String> = dst
                .iter()
                .filter(|c| !src.contains(c))
                .map(|c| format!("{} {}", c.0, c.1))
                .collect();
            return Err(EngineError::invalid(
                "target_columns_differ",
                format!(
                    "table {} has different columns on the target: source only [{}], target only [{}]",
                    t.display_name(),
                    only_src.join(", "),
                    only_dst.join(", ")
                ),
            ));
        }
        if target.key != t.key {
            return Err(EngineError::invalid(
                "target_key_differs",
                format!(
                    "table {} has primary key ({}) on the source but ({}) on the target",
                    t.display_name(),
                    t.key.join(", "),
                    target.key.join(", ")
                ),
            ));
        }
    }
    let access = database_access(conn).await?;
    let (user, db) = (&access.user, &access.database);
    let mut missing = missing_table_privileges(
        conn,
        tables,
        &["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"],
        user,
    )
    .await?;
    // The cutover moves them forward (setval) after reading them.
    missing.extend(sequences::missing_privileges(conn, tables, &["SELECT", "UPDATE"], user).await?);
    let grant = |privilege: &str| {
        format!(
            "{privilege} on database {db:?} (GRANT {privilege} ON DATABASE {} TO {})",
            quote_ident(db),
            quote_ident(user)
        )
    };
    if !access.temp {
        missing.insert(0, grant("TEMP"));
    }
    if !access.create {
        missing.insert(0, grant("CREATE"));
    }
    let hidden = tables_hidden_by_row_security(conn, tables).await?;
    if !hidden.is_empty() {
        missing.push(row_security_missing(&hidden, user));
    }
    if !missing.is_empty() {
        return Err(EngineError::MissingPrivilege(format!(
            "the target role {user:?} lacks: {}",
            missing.join(", ")
        )));
    }
    check_replication_role(conn).await?;
    for t in tables {
        let has_rows: bool =
            sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {})", t.sql_name()))
                .fetch_one(&mut *conn)
                .await
                .context(|| format!("reading {}", t.display_name()))?;
        if has_rows {
            return Err(EngineError::invalid(
                "target_not_empty",
                format!("table {} on the target already has rows; pgshift copies into empty tables (truncate it first)", t.display_name()),
            ));
        }
    }
    Ok(())
}

/// What a role that may not set `session_replication_role` lacks, with the grant to add.
/// pgshift applies with it so that the target's own triggers (a `last_update` stamp would
/// overwrite the replicated value) and foreign-key checks do not fire on replicated rows.
pub fn replication_role_missing(user: &str) -> String {
    format!(
        "SET on session_replication_role, which keeps the target's own triggers and foreign-key checks from firing on replicated rows (GRANT SET ON PARAMETER session_replication_role TO {}; PostgreSQL 15 and later, run by a superuser; before 15 only a superuser may set it)",
        quote_ident(user)
    )
}

/// Refuses a target role that may not set `session_replication_role`, naming the grant. Checked
/// when a migration is created and at the start of each of its runs (a grant revoked meanwhile
/// stops the run before anything is applied without it).
pub async fn check_replication_role(conn: &mut PgConnection) -> EngineResult<()> {
    if can_silence_triggers(conn).await? {
        return Ok(());
    }
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *conn)
        .await
        .context(|| "reading the role's name".into())?;
    Err(EngineError::MissingPrivilege(format!(
        "the target role {user:?} lacks: {}",
        replication_role_missing(&user)
    )))
}

/// Whether this session may set `session_replication_role` (superuser, or PG15's
/// `GRANT SET ON PARAMETER`), which the worker uses so target triggers and foreign-key checks
/// do not fire on replicated rows.
pub async fn can_silence_triggers(conn: &mut PgConnection) -> EngineResult<bool> {
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .context(|| "opening a transaction".into())?;
    let ok = sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .is_ok();
    tx.rollback().await.context(|| "rolling back".into())?;
    Ok(ok)
}
