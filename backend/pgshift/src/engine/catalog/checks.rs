//! Engine layer: the checks each side must pass before a migration installs anything: the source
//! lets pgshift install capture and read every row; the target has every table with the same
//! columns and key, empty, and lets pgshift write it; row-level security hides no row from
//! pgshift's role on either side.

use sqlx::{PgConnection, Row};

use super::keys::{check_keys_comparable, check_keys_immediate};
use super::user_tables;
use crate::engine::error::Context;
use crate::engine::{quote_ident, EngineError, EngineResult};
use crate::store::{ColumnSpec, TableSpec};

async fn missing_table_privileges(
    conn: &mut PgConnection,
    tables: &[TableSpec],
    privileges: &[&str],
) -> EngineResult<Vec<String>> {
    let mut missing = Vec::new();
    for t in tables {
        for p in privileges {
            let ok: bool = sqlx::query_scalar("SELECT has_table_privilege($1::regclass, $2)")
                .bind(t.sql_name())
                .bind(*p)
                .fetch_one(&mut *conn)
                .await
                .context(|| format!("checking {p} on {}", t.display_name()))?;
            if !ok {
                missing.push(format!("{p} on {}", t.sql_name()));
            }
        }
    }
    Ok(missing)
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
    check_keys_comparable(conn, tables).await?;
    check_keys_immediate(conn, tables).await?;
    let access = database_access(conn).await?;
    let (user, db) = (&access.user, &access.database);
    let mut missing = missing_table_privileges(conn, tables, &["SELECT", "TRIGGER"]).await?;
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
    )
    .await?;
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
    if !can_silence_triggers(conn).await? {
        return Err(EngineError::MissingPrivilege(format!(
            "the target role {user:?} may not set session_replication_role, which keeps the target's own triggers from firing on replicated rows; run GRANT SET ON PARAMETER session_replication_role TO {}",
            quote_ident(user)
        )));
    }
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
