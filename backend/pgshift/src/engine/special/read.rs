//! Engine layer (special objects): what the source's catalog holds that is no ordinary table's
//! rows: large objects, materialized views with the tables they read, unlogged tables, foreign
//! tables, and partitions whose detach did not finish. Extension members and pgshift's own
//! objects are left out (an extension brings its own).

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::engine::error::Context;
use crate::engine::EngineResult;

/// Schemas that hold no application object.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
   AND n.nspname !~ '^pg_temp' AND n.nspname !~ '^pgshift_'
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                    WHERE e.classid = 'pg_catalog.pg_class'::regclass AND e.objid = c.oid AND e.deptype = 'e')";

/// A relation's root: itself, or the partitioned table at the top of its tree.
const ROOT: &str =
    "CASE WHEN c.relispartition THEN pg_catalog.pg_partition_root(c.oid) ELSE c.oid END";

/// The large objects: how many, and their owners.
pub struct LargeObjects {
    pub count: i64,
    pub owners: Vec<String>,
}

pub async fn large_objects(conn: &mut PgConnection) -> EngineResult<LargeObjects> {
    let (count, owners): (i64, Vec<String>) = sqlx::query_as(
        "SELECT count(*)::int8, coalesce(array_agg(DISTINCT pg_catalog.pg_get_userbyid(lomowner)::text), '{}')
           FROM pg_catalog.pg_largeobject_metadata",
    )
    .fetch_one(conn)
    .await
    .context(|| "counting large objects".into())?;
    Ok(LargeObjects { count, owners })
}

/// A materialized view and the tables it reads (through views and other
/// materialized views; a partition counts as its root), as `schema.table`.
pub struct MaterializedView {
    pub oid: u32,
    pub name: String,
    pub sql_name: String,
    pub tables: Vec<String>,
}

pub async fn materialized_views(conn: &mut PgConnection) -> EngineResult<Vec<MaterializedView>> {
    let sql = format!(
        "WITH RECURSIVE uses(view, rel) AS (
             SELECT r.ev_class, d.refobjid
               FROM pg_catalog.pg_rewrite r
               JOIN pg_catalog.pg_class m ON m.oid = r.ev_class AND m.relkind = 'm'
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
                                          AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class
           UNION
             SELECT u.view, d.refobjid
               FROM uses u
               JOIN pg_catalog.pg_class v ON v.oid = u.rel AND v.relkind IN ('v', 'm')
               JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
                                          AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.ev_class)
         SELECT c.oid::int8, format('%s.%s', n.nspname, c.relname), format('%I.%I', n.nspname, c.relname),
                array(SELECT DISTINCT format('%s.%s', tn.nspname, t.relname)
                        FROM uses u
                        JOIN pg_catalog.pg_class b ON b.oid = u.rel AND b.relkind IN ('r', 'p', 'f')
                        JOIN pg_catalog.pg_class t
                          ON t.oid = CASE WHEN b.relispartition THEN pg_catalog.pg_partition_root(b.oid) ELSE b.oid END
                        JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
                       WHERE u.view = c.oid
                       ORDER BY 1)
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'm' AND {USER_SCHEMAS}
          ORDER BY n.nspname, c.relname"
    );
    let rows: Vec<(i64, String, String, Vec<String>)> = sqlx::query_as(&sql)
        .fetch_all(conn)
        .await
        .context(|| "listing materialized views".into())?;
    Ok(rows
        .into_iter()
        .map(|(oid, name, sql_name, tables)| MaterializedView {
            oid: oid as u32,
            name,
            sql_name,
            tables,
        })
        .collect())
}

/// A relation with the table at the root of its partition tree (itself when it is none).
pub struct Rooted {
    pub name: String,
    /// Its name for SQL, quoted where needed.
    pub sql_name: String,
    pub root: String,
}

impl Rooted {
    pub fn is_partition(&self) -> bool {
        self.name != self.root
    }
}

/// Unlogged tables and partitions.
pub async fn unlogged_tables(conn: &mut PgConnection) -> EngineResult<Vec<Rooted>> {
    let sql = format!(
        "SELECT format('%s.%s', n.nspname, c.relname), format('%I.%I', n.nspname, c.relname),
                format('%s.%s', tn.nspname, t.relname)
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_catalog.pg_class t ON t.oid = {ROOT}
           JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
          WHERE c.relpersistence = 'u' AND c.relkind IN ('r', 'p') AND {USER_SCHEMAS}
          ORDER BY n.nspname, c.relname"
    );
    let rows: Vec<(String, String, String)> = sqlx::query_as(&sql)
        .fetch_all(conn)
        .await
        .context(|| "listing unlogged tables".into())?;
    Ok(rows
        .into_iter()
        .map(|(name, sql_name, root)| Rooted {
            name,
            sql_name,
            root,
        })
        .collect())
}

/// A foreign table, with its server and foreign-data wrapper.
pub struct ForeignTable {
    pub table: Rooted,
    pub server: String,
    pub wrapper: String,
}

pub async fn foreign_tables(conn: &mut PgConnection) -> EngineResult<Vec<ForeignTable>> {
    let sql = format!(
        "SELECT format('%s.%s', n.nspname, c.relname), format('%I.%I', n.nspname, c.relname),
                format('%s.%s', tn.nspname, t.relname), s.srvname::text, w.fdwname::text
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_catalog.pg_foreign_table f ON f.ftrelid = c.oid
           JOIN pg_catalog.pg_foreign_server s ON s.oid = f.ftserver
           JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw
           JOIN pg_catalog.pg_class t ON t.oid = {ROOT}
           JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
          WHERE c.relkind = 'f' AND {USER_SCHEMAS}
          ORDER BY n.nspname, c.relname"
    );
    let rows: Vec<(String, String, String, String, String)> = sqlx::query_as(&sql)
        .fetch_all(conn)
        .await
        .context(|| "listing foreign tables".into())?;
    Ok(rows
        .into_iter()
        .map(|(name, sql_name, root, server, wrapper)| ForeignTable {
            table: Rooted {
                name,
                sql_name,
                root,
            },
            server,
            wrapper,
        })
        .collect())
}

/// A partition whose `DETACH PARTITION … CONCURRENTLY` did not finish (PostgreSQL 14 and
/// later), with its parent, and the statement that finishes it.
pub struct Detaching {
    pub name: String,
    pub parent: String,
    pub finalize: String,
}

pub async fn detaching_partitions(
    conn: &mut PgConnection,
    major: u32,
) -> EngineResult<Vec<Detaching>> {
    if major < 14 {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT format('%s.%s', n.nspname, c.relname), format('%s.%s', pn.nspname, p.relname),
                format('ALTER TABLE %I.%I DETACH PARTITION %I.%I FINALIZE;', pn.nspname, p.relname, n.nspname, c.relname)
           FROM pg_catalog.pg_inherits i
           JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_catalog.pg_class p ON p.oid = i.inhparent JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
          WHERE i.inhdetachpending AND {USER_SCHEMAS}
          ORDER BY n.nspname, c.relname"
    );
    let rows: Vec<(String, String, String)> = sqlx::query_as(&sql)
        .fetch_all(conn)
        .await
        .context(|| "listing partitions being detached".into())?;
    Ok(rows
        .into_iter()
        .map(|(name, parent, finalize)| Detaching {
            name,
            parent,
            finalize,
        })
        .collect())
}

/// What the target has under some names (SQL names): its kind, persistence and whether it is
/// populated; names it lacks are absent.
pub struct OnTarget {
    pub persistence: char,
    pub populated: bool,
}

pub async fn on_target(
    conn: &mut PgConnection,
    sql_names: &[String],
) -> EngineResult<HashMap<String, OnTarget>> {
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT t.name, c.relpersistence::text, c.relispopulated
           FROM unnest($1::text[]) AS t(name)
           JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(t.name)",
    )
    .bind(sql_names)
    .fetch_all(conn)
    .await
    .context(|| "looking for relations on the target".into())?;
    Ok(rows
        .into_iter()
        .map(|(name, persistence, populated)| {
            (
                name,
                OnTarget {
                    persistence: persistence.chars().next().unwrap_or('p'),
                    populated,
                },
            )
        })
        .collect())
}

/// How many large objects the target holds.
pub async fn large_objects_on_target(conn: &mut PgConnection) -> EngineResult<i64> {
    sqlx::query_scalar("SELECT count(*)::int8 FROM pg_catalog.pg_largeobject_metadata")
        .fetch_one(conn)
        .await
        .context(|| "counting large objects on the target".into())
}

/// The selected tables' partitions that are foreign tables: (table, partition, server).
pub async fn foreign_partitions(
    conn: &mut PgConnection,
    sql_names: &[String],
) -> EngineResult<Vec<(String, String, String)>> {
    sqlx::query_as(
        "SELECT format('%s.%s', rn.nspname, r.relname), format('%s.%s', n.nspname, c.relname), s.srvname::text
           FROM unnest($1::text[]) AS t(name)
           JOIN pg_catalog.pg_class r ON r.oid = pg_catalog.to_regclass(t.name) AND r.relkind = 'p'
           JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
           CROSS JOIN LATERAL pg_catalog.pg_partition_tree(r.oid) p
           JOIN pg_catalog.pg_class c ON c.oid = p.relid AND c.relkind = 'f'
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_catalog.pg_foreign_table f ON f.ftrelid = c.oid
           JOIN pg_catalog.pg_foreign_server s ON s.oid = f.ftserver
          ORDER BY 1, 2",
    )
    .bind(sql_names)
    .fetch_all(conn)
    .await
    .context(|| "looking for foreign partitions".into())
}
