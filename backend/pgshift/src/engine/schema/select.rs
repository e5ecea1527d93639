//! Engine layer (target schema): which objects of the source's schema the selected tables need,
//! and when each is built on the target. The source's `pg_depend` says it: the tables (with their
//! partitions) and what hangs on them (defaults, keys, indexes, constraints, triggers, rules,
//! policies, owned sequences), what they use (schemas, types, enums, domains, functions,
//! sequences, collations; an object that belongs to an extension brings the extension), and what
//! uses them (views, functions, and what uses those). Objects of tables that are not selected
//! are left out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use sqlx::PgConnection;

use super::depend::{read_catalog, read_keys, Catalog, Keys};
use super::toc::Entry;
use crate::engine::error::Context;
use crate::engine::EngineResult;
use crate::store::TableSpec;

const PG_CLASS: u32 = 1259;
const PG_TYPE: u32 = 1247;
const PG_PROC: u32 = 1255;
const PG_CONSTRAINT: u32 = 2606;
const PG_ATTRDEF: u32 = 2604;
const PG_REWRITE: u32 = 2618;
const PG_EXTENSION: u32 = 3079;
pub(super) const PG_NAMESPACE: u32 = 2615;
/// Objects below this oid come with PostgreSQL itself (`FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16384;

pub(super) type Node = (u32, u32);

/// When an object is built on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Before the copy: what the tables need to exist and take rows by key.
    Before,
    /// Once every table in the list is copied (catching up or synced).
    AfterCopy(Vec<i32>),
    /// A foreign key between these tables: added `NOT VALID` once both are copied, validated
    /// once both are synced. `partitioned`: on a partitioned table, where PostgreSQL before 18
    /// refuses `NOT VALID`, so it is added whole once both are synced. `validate` is the
    /// statement that validates it.
    ForeignKey {
        tables: Vec<i32>,
        partitioned: bool,
        validate: String,
    },
}

/// What the catalog says about the migrated tables' objects.
#[derive(Debug, Default)]
pub struct Selection {
    /// The migrated tables and their partitions.
    relations: HashSet<Node>,
    /// Each of those relations' table number (of the migrated table it belongs to).
    root_of: HashMap<u32, i32>,
    before: HashSet<Node>,
    /// Objects hanging on a migrated relation, with the table number of its root.
    parts: HashMap<Node, i32>,
    /// Parts built before the copy: defaults, owned sequences, the key.
    before_parts: HashSet<Node>,
    foreign_keys: HashMap<Node, (Vec<i32>, bool, String)>,
    dependents: HashMap<Node, BTreeSet<i32>>,
    /// Extensions needed (names).
    pub extensions: BTreeSet<String>,
    /// The other tables, as pg_dump patterns (`"schema"."table"`): left out of the dump, which
    /// then neither reads nor locks them.
    pub excluded_tables: Vec<String>,
    /// The materialized views built (they use migrated tables), by oid.
    pub materialized_views: BTreeMap<u32, MaterializedView>,
}

/// A materialized view schema "create" builds.
#[derive(Debug, Clone)]
pub struct MaterializedView {
    /// Its name for SQL, quoted where needed (`shop."Daily"`).
    pub sql_name: String,
    /// Whether it holds rows on the source (it was refreshed, not left `WITH NO DATA`).
    pub populated: bool,
    /// The migrated tables (numbers) it waits for.
    pub tables: Vec<i32>,
}

/// Reads the source's catalog and decides, for every object, whether and when it is built.
pub async fn select(conn: &mut PgConnection, tables: &[TableSpec]) -> EngineResult<Selection> {
    let mut root_of: HashMap<u32, i32> = HashMap::new();
    for t in tables {
        let members: Vec<i64> = sqlx::query_scalar(
            "SELECT $1::regclass::oid::int8
             UNION SELECT relid::int8 FROM pg_catalog.pg_partition_tree($1::regclass)",
        )
        .bind(t.sql_name())
        .fetch_all(&mut *conn)
        .await
        .context(|| format!("reading the partitions of {}", t.display_name()))?;
        for oid in members {
            root_of.insert(oid as u32, t.no);
        }
    }
    let catalog = read_catalog(conn).await?;
    let relations: Vec<u32> = root_of.keys().copied().collect();
    let keys = read_keys(conn, &relations, tables, &root_of).await?;
    let oids: Vec<i64> = relations.iter().map(|o| *o as i64).collect();
    let excluded_tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('\"%s\".\"%s\"', replace(n.nspname, '\"', '\"\"'), replace(c.relname, '\"', '\"\"'))
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'f') AND c.oid >= 16384 AND c.oid <> ALL($1::int8[]::oid[])
            AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
            AND n.nspname !~ '^pgshift_'
          ORDER BY 1",
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await
    .context(|| "listing the tables left out of the migration".into())?;
    let mut selection = decide(&catalog, &keys, &root_of);
    selection.excluded_tables = excluded_tables;
    Ok(selection)
}

fn decide(catalog: &Catalog, keys: &Keys, root_of: &HashMap<u32, i32>) -> Selection {
    let rels: HashSet<Node> = root_of.keys().map(|o| (PG_CLASS, *o)).collect();
    let mut sel = Selection {
        relations: rels.clone(),
        root_of: root_of.clone(),
        ..Selection::default()
    };
    let relkind = |node: &Node| {
        (node.0 == PG_CLASS)
            .then(|| catalog.relkind.get(&node.1).copied())
            .flatten()
    };

    // What hangs on each relation (auto and internal dependents, recursively).
    let mut queue: VecDeque<(Node, i32)> = rels.iter().map(|n| (*n, root_of[&n.1])).collect();
    while let Some((node, no)) = queue.pop_front() {
        for (part, deptype) in catalog.dependents.get(&node).into_iter().flatten() {
            if !matches!(deptype, 'a' | 'i') || rels.contains(part) || sel.parts.contains_key(part)
            {
                continue;
            }
            if matches!(relkind(part), Some('r' | 'p' | 'v' | 'm' | 'f')) {
                continue;
            }
            let pgshifts = catalog
                .refs
                .get(part)
                .into_iter()
                .flatten()
                .any(|(r, _)| catalog.pgshift_objects.contains(r));
            if pgshifts || catalog.pgshift_objects.contains(part) {
                continue;
            }
            sel.parts.insert(*part, no);
            queue.push_back((*part, no));
        }
    }
    for (part, no) in &sel.parts {
        let before = match part.0 {
            PG_ATTRDEF | PG_TYPE => true,
            PG_CLASS => match relkind(part) {
                Some('S' | 't') => true,
                Some('i' | 'I') => keys.key_indexes.contains(&part.1),
                _ => false,
            },
            PG_CONSTRAINT => match keys.constraints.get(&part.1) {
                Some(('p', ..)) => true,
                Some(('u', _, index, _)) => keys.key_indexes.contains(index),
                Some(('f', refrel, _, validate)) => {
                    let mut both: Vec<i32> = vec![*no];
                    if let Some(other) = root_of.get(refrel) {
                        if other != no {
                            both.push(*other);
                        }
                    }
                    let owner_partitioned = catalog
                        .refs
                        .get(part)
                        .into_iter()
                        .flatten()
                        .any(|(r, d)| *d == 'a' && relkind(r) == Some('p'));
                    sel.foreign_keys
                        .insert(*part, (both, owner_partitioned, validate.clone()));
                    false
                }
                _ => false,
            },
            _ => false,
        };
        if before {
            sel.before_parts.insert(*part);
        }
    }

    // What uses the relations: views (through their rewrite rule) and functions, recursively.
    let mut queue: VecDeque<Node> = rels.iter().chain(sel.parts.keys()).copied().collect();
    while let Some(node) = queue.pop_front() {
        let tables: BTreeSet<i32> =
            if let Some(no) = root_of.get(&node.1).filter(|_| rels.contains(&node)) {
                BTreeSet::from([*no])
            } else if let Some(no) = sel.parts.get(&node) {
                BTreeSet::from([*no])
            } else {
                sel.dependents.get(&node).cloned().unwrap_or_default()
            };
        for (user, deptype) in catalog.dependents.get(&node).into_iter().flatten() {
            if *deptype != 'n' || rels.contains(user) || sel.parts.contains_key(user) {
                continue;
            }
            let object = match user.0 {
                PG_REWRITE => catalog
                    .refs
                    .get(user)
                    .into_iter()
                    .flatten()
                    .find(|(r, d)| *d == 'i' && matches!(relkind(r), Some('v' | 'm')))
                    .map(|(r, _)| *r),
                PG_PROC => Some(*user),
                _ => None,
            };
            let Some(object) = object else { continue };
            if rels.contains(&object)
                || catalog.extension_of.contains_key(&object)
                || catalog.pgshift_objects.contains(&object)
            {
                continue;
            }
            let entry = sel.dependents.entry(object).or_default();
            let before = entry.len();
            entry.extend(tables.iter().copied());
            if entry.len() != before {
                queue.push_back(object);
            }
        }
    }

    // A materialized view's indexes go with it (a unique one is what `REFRESH … CONCURRENTLY`
    // needs on the target after the cutover), built once it is.
    for (view, tables) in sel.dependents.clone() {
        let Some((sql_name, populated)) =
            catalog.matviews.get(&view.1).filter(|_| view.0 == PG_CLASS)
        else {
            continue;
        };
        for (part, deptype) in catalog.dependents.get(&view).into_iter().flatten() {
            if *deptype == 'a' && relkind(part) == Some('i') {
                sel.dependents.insert(*part, tables.clone());
            }
        }
        sel.materialized_views.insert(
            view.1,
            MaterializedView {
                sql_name: sql_name.clone(),
                populated: *populated,
                tables: tables.into_iter().collect(),
            },
        );
    }

    // What everything above uses, built before the copy.
    let mut walk: VecDeque<Node> = rels
        .iter()
        .chain(sel.parts.keys())
        .chain(sel.dependents.keys())
        .copied()
        .collect();
    // A view's definition is its rewrite rule's.
    for view in sel.dependents.keys() {
        for (user, deptype) in catalog.dependents.get(view).into_iter().flatten() {
            if *deptype == 'i' && user.0 == PG_REWRITE {
                walk.push_back(*user);
            }
        }
    }
    let mut seen: HashSet<Node> = walk.iter().copied().collect();
    while let Some(node) = walk.pop_front() {
        let mut next: Vec<Node> = catalog
            .refs
            .get(&node)
            .into_iter()
            .flatten()
            .map(|(r, _)| *r)
            .collect();
        // A domain's constraints use functions and types of their own.
        if node.0 == PG_TYPE {
            next.extend(
                catalog
                    .dependents
                    .get(&node)
                    .into_iter()
                    .flatten()
                    .filter(|(d, t)| matches!(t, 'a' | 'i') && d.0 == PG_CONSTRAINT)
                    .map(|(d, _)| *d),
            );
        }
        for r in next {
            if r.1 < FIRST_NORMAL_OID && r.0 != PG_EXTENSION {
                continue;
            }
            if let Some(ext) = catalog.extension_of.get(&r) {
                let ext_node = (PG_EXTENSION, *ext);
                if let Some(name) = catalog.extension_names.get(ext) {
                    sel.extensions.insert(name.clone());
                }
                if sel.before.insert(ext_node) {
                    walk.push_back(ext_node);
                }
                continue;
            }
            if rels.contains(&r)
                || catalog.pgshift_objects.contains(&r)
                || sel.dependents.contains_key(&r)
                || matches!(relkind(&r), Some('r' | 'p' | 'v' | 'm' | 'f'))
            {
                continue;
            }
            if r.0 == PG_EXTENSION {
                if let Some(name) = catalog.extension_names.get(&r.1) {
                    sel.extensions.insert(name.clone());
                }
            }
            if !sel.parts.contains_key(&r) {
                sel.before.insert(r);
            }
            if seen.insert(r) {
                walk.push_back(r);
            }
        }
    }
    sel
}

impl Selection {
    /// The migrated table an entry for a relation (a table or partition) belongs to.
    pub fn table_of(&self, entry: &Entry) -> Option<i32> {
        (entry.catalog == PG_CLASS)
            .then(|| self.root_of.get(&entry.oid).copied())
            .flatten()
    }

    /// The materialized view an archive entry creates, when it is one that is built.
    pub fn materialized_view(&self, entry: &Entry) -> Option<&MaterializedView> {
        (entry.catalog == PG_CLASS && entry.kind == "MATERIALIZED VIEW")
            .then(|| self.materialized_views.get(&entry.oid))
            .flatten()
    }

    /// When the archive entry for a catalog object is built, or None when it is left out.
    pub fn phase_of(&self, entry: &Entry) -> Option<Phase> {
        let node = (entry.catalog, entry.oid);
        if entry.kind == "ROW SECURITY" {
            return self
                .root_of
                .get(&entry.oid)
                .map(|no| Phase::AfterCopy(vec![*no]));
        }
        if entry.catalog == 0 {
            return None;
        }
        if self.relations.contains(&node)
            || self.before.contains(&node)
            || self.before_parts.contains(&node)
        {
            return Some(Phase::Before);
        }
        if let Some((tables, partitioned, validate)) = self.foreign_keys.get(&node) {
            return Some(Phase::ForeignKey {
                tables: tables.clone(),
                partitioned: *partitioned,
                validate: validate.clone(),
            });
        }
        if let Some(no) = self.parts.get(&node) {
            return Some(Phase::AfterCopy(vec![*no]));
        }
        if let Some(tables) = self.dependents.get(&node) {
            return Some(Phase::AfterCopy(tables.iter().copied().collect()));
        }
        None
    }
}
