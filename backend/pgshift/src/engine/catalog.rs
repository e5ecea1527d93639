//! Reading table definitions and privileges from the source and target catalogs, and the checks
//! a migration must pass before anything is installed.

use sqlx::{PgConnection, Row};

use super::error::Context;
use super::{EngineError, EngineResult};
use crate::store::{ColumnSpec, TableSpec};

/// A table as found in a catalog.
#[derive(Debug, Clone)]
pub struct CatalogTable {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub partitioned: bool,
    pub key: Vec<String>,
    /// The unique index the key comes from when the table has no primary key.
    pub key_index: Option<String>,
    pub columns: Vec<ColumnSpec>,
}

impl CatalogTable {
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Tables with the key pgshift identifies their rows by: the primary key, or else the unique
/// index over NOT NULL columns with the fewest columns (then by name; immediate, valid, no
/// predicate, no expression), which identifies a row just as well (issue 10). Only an index's
/// key columns count, not its INCLUDE columns.
const TABLES_SQL: &str = r#"
WITH unique_keys AS (
    SELECT i.indrelid, i.indisprimary, i.indexrelid::regclass::text AS index_name,
           array_agg(a.attname::text ORDER BY k.ord) AS cols, bool_and(a.attnotnull) AS not_null
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indisunique AND i.indisvalid AND i.indpred IS NULL
       AND i.indexprs IS NULL AND k.ord <= i.indnkeyatts
       -- A deferrable primary key is still the key (and refused by check_keys_immediate with
       -- the reason); a deferrable unique index is not a candidate.
       AND (i.indisprimary OR i.indimmediate)
     GROUP BY i.indrelid, i.indisprimary, i.indexrelid)
SELECT c.oid::oid AS oid, n.nspname::text AS schema, c.relname::text AS name, c.relkind = 'p' AS partitioned,
       coalesce(pk.cols, uk.cols, '{}') AS key,
       CASE WHEN pk.cols IS NULL THEN uk.index_name END AS key_index
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN unique_keys pk ON pk.indrelid = c.oid AND pk.indisprimary
  LEFT JOIN LATERAL (SELECT u.cols, u.index_name FROM unique_keys u
                      WHERE u.indrelid = c.oid AND NOT u.indisprimary AND u.not_null
                      ORDER BY cardinality(u.cols), u.index_name LIMIT 1) uk ON true
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp' AND n.nspname !~ '^pgshift_'
 ORDER BY n.nspname, c.relname
"#;

const COLUMNS_SQL: &str = r#"
SELECT a.attrelid::oid AS oid, a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type_name,
       a.attgenerated <> '' AS generated, a.attidentity = 'a' AS identity_always
  FROM pg_attribute a
 WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attrelid, a.attnum
"#;

/// Every user table of the connected database (partitions are reached through their parent).
pub async fn user_tables(conn: &mut PgConnection) -> EngineResult<Vec<CatalogTable>> {
    let rows = sqlx::query(TABLES_SQL)
        .fetch_all(&mut *conn)
        .await
        .context(|| "listing tables".into())?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        tables.push(CatalogTable {
            oid: row.get::<sqlx::postgres::types::Oid, _>("oid").0,
            schema: row.get("schema"),
            name: row.get("name"),
            partitioned: row.get("partitioned"),
            key: row.get("key"),
            key_index: row.get("key_index"),
            columns: Vec::new(),
        });
    }
    let oids: Vec<sqlx::postgres::types::Oid> = tables
        .iter()
        .map(|t| sqlx::postgres::types::Oid(t.oid))
        .collect();
    let rows = sqlx::query(COLUMNS_SQL)
        .bind(&oids)
        .fetch_all(&mut *conn)
        .await
        .context(|| "listing columns".into())?;
    for row in rows {
        let oid = row.get::<sqlx::postgres::types::Oid, _>("oid").0;
        if let Some(t) = tables.iter_mut().find(|t| t.oid == oid) {
            t.columns.push(ColumnSpec {
                name: row.get("name"),
                type_name: row.get("type_name"),
                generated: row.get("generated"),
                identity_always: row.get("identity_always"),
            });
        }
    }
    Ok(tables)
}

/// `*` matches any run of characters; everything else matches itself.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// Picks the tables the patterns select; every pattern must select something.
pub fn select_tables(
    all: &[CatalogTable],
    patterns: Option<&[String]>,
) -> EngineResult<Vec<CatalogTable>> {
    let selected: Vec<CatalogTable> = match patterns {
        None => all.to_vec(),
        Some(patterns) => {
            if patterns.is_empty() {
                return Err(EngineError::invalid(
                    "no_tables",
                    "tables is empty: give at least one pattern, or omit it to migrate every table",
                ));
            }
            for p in patterns {
                if p.trim().is_empty() {
                    return Err(EngineError::invalid(
                        "invalid_pattern",
                        "a table pattern is empty",
                    ));
                }
                if !all.iter().any(|t| pattern_matches(p, &t.display_name())) {
                    return Err(EngineError::invalid(
                        "pattern_matches_nothing",
                        format!("table pattern {p:?} matches no table in the source database (patterns match schema.table, e.g. \"public.orders\" or \"sales.*\")"),
                    ));
                }
            }
            all.iter()
                .filter(|t| {
                    patterns
                        .iter()
                        .any(|p| pattern_matches(p, &t.display_name()))
                })
                .cloned()
                .collect()
        }
    };
    if selected.is_empty() {
        return Err(EngineError::invalid(
            "no_tables",
            "the source database has no tables to migrate",
        ));
    }
    let keyless: Vec<String> = selected
        .iter()
        .filter(|t| t.key.is_empty())
        .map(|t| t.display_name())
        .collect();
    if !keyless.is_empty() {
        return Err(EngineError::invalid(
            "no_primary_key",
            format!(
                "table(s) without a primary key or a unique index over NOT NULL columns: {}. pgshift identifies rows by such a key to replicate updates and deletes; add one or leave these tables out with table patterns",
                keyless.join(", ")
            ),
        ));
    }
    Ok(selected)
}

/// Turns selected source tables into the specs stored with the migration.
pub fn specs(selected: &[CatalogTable]) -> Vec<TableSpec> {
    selected
        .iter()
        .enumerate()
        .map(|(i, t)| TableSpec {
            no: i as i32 + 1,
            schema: t.schema.clone(),
            name: t.name.clone(),
            key: t.key.clone(),
            columns: t.columns.clone(),
            partitioned: t.partitioned,
        })
        .collect()
}

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
        super::quote_ident(user)
    )
}

/// Checks that every table's key can be compared in pgshift's sessions, as the copy's chunks and
/// the apply's key matches do. Those sessions pin `search_path = pg_catalog, pg_temp` (see
/// [`super::pg::SESSION_SETTINGS`]), so the operators of a type that lives elsewhere (an
/// extension's `ltree` in `public`) are found only when the type casts implicitly to a built-in
/// one (`citext` to `text`). Such keys are refused here rather than failing on every attempt.
pub async fn check_keys_comparable(
    conn: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<()> {
    for t in tables {
        let key: Vec<&crate::store::ColumnSpec> = t
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
                super::quote_ident(db),
                super::quote_ident(user)
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
            super::quote_ident(db),
            super::quote_ident(user)
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
            super::quote_ident(user)
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

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn patterns_match_schema_dot_table() {
        assert!(pattern_matches("public.*", "public.orders"));
        assert!(pattern_matches("*.orders", "sales.orders"));
        assert!(pattern_matches("public.ord*s", "public.orders"));
        assert!(!pattern_matches("public.ord", "public.orders"));
        assert!(pattern_matches("*", "x.y"));
        assert!(pattern_matches("public.Ünïcode", "public.Ünïcode"));
    }
}
