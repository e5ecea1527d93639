//! Engine layer (target schema): what the selection reads from the source's catalog: every
//! object's dependencies (`pg_depend`), each relation's kind, the extensions, pgshift's own
//! objects, and the constraints and key indexes of the migrated relations. `select.rs` decides
//! from them what is built and when.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;

use super::select::{Node, PG_NAMESPACE};
use crate::engine::error::Context;
use crate::engine::EngineResult;
use crate::store::TableSpec;

pub(super) struct Catalog {
    pub(super) refs: HashMap<Node, Vec<(Node, char)>>,
    pub(super) dependents: HashMap<Node, Vec<(Node, char)>>,
    pub(super) relkind: HashMap<u32, char>,
    /// Materialized views: their SQL name and whether they are populated.
    pub(super) matviews: HashMap<u32, (String, bool)>,
    pub(super) extension_of: HashMap<Node, u32>,
    pub(super) extension_names: HashMap<u32, String>,
    /// pgshift's own objects on the source (its capture functions…): what uses them (its
    /// triggers on the migrated tables) is pgshift's, not the application's.
    pub(super) pgshift_objects: HashSet<Node>,
}

pub(super) async fn read_catalog(conn: &mut PgConnection) -> EngineResult<Catalog> {
    let deps: Vec<(i64, i64, i64, i64, String)> = sqlx::query_as(
        "SELECT classid::int8, objid::int8, refclassid::int8, refobjid::int8, deptype::text
           FROM pg_catalog.pg_depend
          WHERE deptype IN ('n', 'a', 'i', 'e') AND objid >= 16384 AND classid <> 0",
    )
    .fetch_all(&mut *conn)
    .await
    .context(|| "reading the source's object dependencies".into())?;
    let kinds: Vec<(i64, String, Option<String>, bool)> = sqlx::query_as(
        "SELECT c.oid::int8, c.relkind::text,
                CASE WHEN c.relkind = 'm' THEN format('%I.%I', n.nspname, c.relname) END, c.relispopulated
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid >= 16384",
    )
    .fetch_all(&mut *conn)
    .await
    .context(|| "reading the source's relations".into())?;
    let extensions: Vec<(i64, String)> =
        sqlx::query_as("SELECT oid::int8, extname::text FROM pg_catalog.pg_extension")
            .fetch_all(&mut *conn)
            .await
            .context(|| "reading the source's extensions".into())?;
    let pgshift_namespaces: Vec<i64> = sqlx::query_scalar(
        "SELECT oid::int8 FROM pg_catalog.pg_namespace WHERE nspname ~ '^pgshift_'",
    )
    .fetch_all(&mut *conn)
    .await
    .context(|| "reading pgshift's schemas on the source".into())?;
    let mut catalog = Catalog {
        pgshift_objects: HashSet::new(),
        refs: HashMap::new(),
        dependents: HashMap::new(),
        matviews: kinds
            .iter()
            .filter_map(|(oid, _, name, populated)| {
                name.clone().map(|n| (*oid as u32, (n, *populated)))
            })
            .collect(),
        relkind: kinds
            .into_iter()
            .map(|(oid, k, _, _)| (oid as u32, k.chars().next().unwrap_or('r')))
            .collect(),
        extension_of: HashMap::new(),
        extension_names: extensions
            .into_iter()
            .map(|(oid, name)| (oid as u32, name))
            .collect(),
    };
    for (class, obj, refclass, refobj, deptype) in deps {
        let node = (class as u32, obj as u32);
        let target = (refclass as u32, refobj as u32);
        let deptype = deptype.chars().next().unwrap_or('n');
        if deptype == 'e' {
            catalog.extension_of.insert(node, target.1);
            continue;
        }
        if target.0 == PG_NAMESPACE && pgshift_namespaces.contains(&(target.1 as i64)) {
            catalog.pgshift_objects.insert(node);
        }
        catalog
            .refs
            .entry(node)
            .or_default()
            .push((target, deptype));
        catalog
            .dependents
            .entry(target)
            .or_default()
            .push((node, deptype));
    }
    Ok(catalog)
}

/// Facts about the constraints and indexes hanging on the migrated relations.
pub(super) struct Keys {
    /// Constraint oid → (contype, referenced relation, index, validate statement).
    pub(super) constraints: HashMap<u32, (char, u32, u32, String)>,
    /// Indexes (and the constraints owning them) that carry a table's key.
    pub(super) key_indexes: HashSet<u32>,
}

pub(super) async fn read_keys(
    conn: &mut PgConnection,
    relations: &[u32],
    tables: &[TableSpec],
    root_of: &HashMap<u32, i32>,
) -> EngineResult<Keys> {
    let oids: Vec<i64> = relations.iter().map(|o| *o as i64).collect();
    let rows: Vec<(i64, String, i64, i64, String)> = sqlx::query_as(
        "SELECT c.oid::int8, c.contype::text, c.confrelid::int8, c.conindid::int8,
                format('ALTER TABLE %I.%I VALIDATE CONSTRAINT %I', n.nspname, r.relname, c.conname)
           FROM pg_catalog.pg_constraint c
           JOIN pg_catalog.pg_class r ON r.oid = c.conrelid
           JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
          WHERE c.conrelid = ANY($1::int8[]::oid[])",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await
    .context(|| "reading the constraints of the migrated tables".into())?;
    let constraints = rows
        .into_iter()
        .map(|(oid, kind, refrel, index, validate)| {
            (
                oid as u32,
                (
                    kind.chars().next().unwrap_or('c'),
                    refrel as u32,
                    index as u32,
                    validate,
                ),
            )
        })
        .collect();
    // The key: the primary key's index, or the unique index over exactly the key's columns.
    let indexes: Vec<(i64, i64, bool, Vec<String>)> = sqlx::query_as(
        "SELECT i.indexrelid::int8, i.indrelid::int8, i.indisprimary,
                array(SELECT a.attname::text FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
                        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                       WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
           FROM pg_catalog.pg_index i
          WHERE i.indrelid = ANY($1::int8[]::oid[]) AND i.indisunique",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await
    .context(|| "reading the indexes of the migrated tables".into())?;
    let mut key_indexes = HashSet::new();
    for (index, rel, primary, columns) in indexes {
        let Some(no) = root_of.get(&(rel as u32)) else {
            continue;
        };
        let Some(table) = tables.iter().find(|t| t.no == *no) else {
            continue;
        };
        if primary || columns == table.key {
            key_indexes.insert(index as u32);
        }
    }
    Ok(Keys {
        constraints,
        key_indexes,
    })
}
