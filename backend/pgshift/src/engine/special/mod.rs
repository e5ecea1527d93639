//! Engine layer: what a migration does not move as rows of its tables, said up front (issue 10,
//! section 5). Large objects, materialized views, unlogged tables, foreign tables and partitions
//! left half-detached are each named with what happens to them: moved, refreshed on the target,
//! built empty, left out with the reason (and the command that does it by hand), or refused.
//! The preview, creation, `GET /api/v1/migrations/{name}`, the CLI and the dashboard show the
//! same list. Reading the catalogs is in `read.rs`.

mod read;

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use sqlx::PgConnection;

use super::schema::{self, DumpSource};
use super::{EngineError, EngineResult};
use crate::store::{SchemaMode, TableSpec};

/// What kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpecialKind {
    /// The database's large objects (`pg_largeobject`), all in one entry.
    LargeObjects,
    MaterializedView,
    UnloggedTable,
    ForeignTable,
    /// A partition whose `DETACH PARTITION … CONCURRENTLY` did not finish.
    DetachingPartition,
}

/// What pgshift does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Handling {
    /// Its rows are copied and its changes replicated like any migrated table's.
    Moved,
    /// Built on the target and refreshed there once the tables it reads are synced.
    Refreshed,
    /// Built on the target without rows, as it is on the source.
    BuiltEmpty,
    /// Nothing of it reaches the target; `words` say why and what to do.
    LeftOut,
    /// The migration is refused while it is there; `words` say how to proceed.
    Refused,
}

impl SpecialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpecialKind::LargeObjects => "large_objects",
            SpecialKind::MaterializedView => "materialized_view",
            SpecialKind::UnloggedTable => "unlogged_table",
            SpecialKind::ForeignTable => "foreign_table",
            SpecialKind::DetachingPartition => "detaching_partition",
        }
    }

    /// For people: `materialized view`.
    pub fn words(self) -> &'static str {
        match self {
            SpecialKind::LargeObjects => "large objects",
            SpecialKind::MaterializedView => "materialized view",
            SpecialKind::UnloggedTable => "unlogged table",
            SpecialKind::ForeignTable => "foreign table",
            SpecialKind::DetachingPartition => "partition being detached",
        }
    }
}

impl Handling {
    pub fn as_str(self) -> &'static str {
        match self {
            Handling::Moved => "moved",
            Handling::Refreshed => "refreshed",
            Handling::BuiltEmpty => "built_empty",
            Handling::LeftOut => "left_out",
            Handling::Refused => "refused",
        }
    }

    /// For people: `left out`.
    pub fn words(self) -> &'static str {
        match self {
            Handling::Moved => "moved",
            Handling::Refreshed => "refreshed on the target",
            Handling::BuiltEmpty => "built empty",
            Handling::LeftOut => "left out",
            Handling::Refused => "refused",
        }
    }
}

/// One object and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SpecialObject {
    pub kind: SpecialKind,
    /// `schema.name`, or for large objects how many (`3 large objects`).
    pub name: String,
    pub handling: Handling,
    /// What happens and why, and what to do about it, for people.
    pub words: String,
    /// A command that does by hand what `words` say is left to the operator (copying the large
    /// objects, refreshing a materialized view, finishing a detach).
    pub command: Option<String>,
}

/// What the list depends on besides the catalogs.
pub struct Scope<'a> {
    /// The migrated tables (all the patterns select).
    pub tables: &'a [TableSpec],
    pub mode: SchemaMode,
    /// Where the source and target databases are, for the large objects' command (no password).
    pub source: &'a DumpSource,
    pub target: &'a DumpSource,
}

/// Every special object of the source database, and what the migration does with it.
pub async fn list(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    scope: &Scope<'_>,
) -> EngineResult<Vec<SpecialObject>> {
    let selected: HashSet<String> = scope.tables.iter().map(|t| t.display_name()).collect();
    let mut out = Vec::new();

    let lo = read::large_objects(src).await?;
    if lo.count > 0 {
        let on_target = read::large_objects_on_target(dst).await?;
        out.push(large_objects(&lo, on_target, scope));
    }

    let views = read::materialized_views(src).await?;
    let built = match scope.mode {
        SchemaMode::Create if !views.is_empty() && !scope.tables.is_empty() => {
            schema::materialized_views(src, scope.tables).await?
        }
        _ => BTreeMap::new(),
    };
    let names: Vec<String> = views.iter().map(|v| v.sql_name.clone()).collect();
    let there = read::on_target(dst, &names).await?;
    for v in &views {
        let (handling, words, command) = match (scope.mode, built.get(&v.oid)) {
            (SchemaMode::Create, Some(b)) => {
                let reads = scope
                    .tables
                    .iter()
                    .filter(|t| b.tables.contains(&t.no))
                    .map(|t| t.display_name())
                    .collect::<Vec<_>>()
                    .join(", ");
                let outside: Vec<&str> = v
                    .tables
                    .iter()
                    .filter(|t| !selected.contains(*t))
                    .map(String::as_str)
                    .collect();
                let synced = if b.tables.len() == 1 {
                    "it is synced"
                } else {
                    "they are synced"
                };
                let mut words = if b.populated {
                    format!("built on the target after the copy of {reads} (WITH NO DATA, as pg_dump creates it), then refreshed there once {synced}: the cutover waits for that REFRESH, shown among the tables' objects to build. Its rows are computed from the target's rows at that moment, not copied from the source's, which hold what the source's last refresh computed; refresh it again after the cutover if it must include the last writes")
                } else {
                    format!("built on the target after the copy of {reads}, WITH NO DATA: it holds no rows on the source either (never refreshed), and stays so until you refresh it")
                };
                if !outside.is_empty() {
                    words.push_str(&format!(
                        ". It also reads {}, which the migration leaves out: its build fails on the target (holding the cutover) until that exists there; migrate it too, or create it on the target and resume",
                        outside.join(", ")
                    ));
                }
                let handling = if b.populated {
                    Handling::Refreshed
                } else {
                    Handling::BuiltEmpty
                };
                let command = (!b.populated)
                    .then(|| format!("REFRESH MATERIALIZED VIEW {};", v.sql_name));
                (handling, words, command)
            }
            (SchemaMode::Create, None) if v.tables.is_empty() => (
                Handling::LeftOut,
                "reads no table: pgshift builds only what the migrated tables need; create it on the target yourself if the application uses it".to_string(),
                None,
            ),
            (SchemaMode::Create, None) => (
                Handling::LeftOut,
                format!(
                    "reads only tables the migration leaves out ({}): pgshift does not build it; migrate those too to have it built and refreshed",
                    v.tables.join(", ")
                ),
                None,
            ),
            (SchemaMode::Existing, _) => {
                let (state, command) = match there.get(&v.sql_name) {
                    None => ("it is not on the target: create it there if the application uses it", None),
                    Some(t) if t.populated => (
                        "on the target it exists; refresh it there after the cutover so that its rows come from the moved rows",
                        Some(format!("REFRESH MATERIALIZED VIEW {};", v.sql_name)),
                    ),
                    Some(_) => (
                        "on the target it exists but holds no rows (WITH NO DATA); refresh it there after the cutover, before the application reads it",
                        Some(format!("REFRESH MATERIALIZED VIEW {};", v.sql_name)),
                    ),
                };
                (
                    Handling::LeftOut,
                    format!("schema \"existing\": pgshift neither builds nor refreshes materialized views on the target, and copies none of their rows; {state}"),
                    command,
                )
            }
        };
        out.push(SpecialObject {
            kind: SpecialKind::MaterializedView,
            name: v.name.clone(),
            handling,
            words,
            command,
        });
    }

    let unlogged = read::unlogged_tables(src).await?;
    let names: Vec<String> = unlogged.iter().map(|u| u.sql_name.clone()).collect();
    let there = read::on_target(dst, &names).await?;
    for (u, name) in unlogged.iter().zip(&names) {
        let part_of = if u.is_partition() {
            format!(" (a partition of {})", u.root)
        } else {
            String::new()
        };
        let (handling, words) = if !selected.contains(&u.root) {
            (
                Handling::LeftOut,
                format!("unlogged{part_of}; not selected by the table patterns"),
            )
        } else {
            let on_target = match (scope.mode, there.get(name)) {
                (SchemaMode::Create, _) => {
                    "built UNLOGGED on the target too, as on the source".to_string()
                }
                (SchemaMode::Existing, Some(t)) if t.persistence == 'u' => {
                    "UNLOGGED on the target too, as you made it".to_string()
                }
                (SchemaMode::Existing, Some(_)) => {
                    "LOGGED on the target, as you made it (crash-safe there)".to_string()
                }
                (SchemaMode::Existing, None) => "not on the target yet".to_string(),
            };
            (
                Handling::Moved,
                format!(
                    "unlogged{part_of}: its rows are copied and its changes replicated like any migrated table's (the capture trigger works on unlogged tables); {on_target}. PostgreSQL empties an unlogged table when its server recovers from a crash, and that is no change pgshift can capture: after a crash of either server, resync {} (or verify it), or the two sides differ",
                    u.root
                ),
            )
        };
        out.push(SpecialObject {
            kind: SpecialKind::UnloggedTable,
            name: u.name.clone(),
            handling,
            words,
            command: None,
        });
    }

    for f in read::foreign_tables(src).await? {
        let lives = format!(
            "its rows live on foreign server {} (foreign-data wrapper {}), not in this database",
            f.server, f.wrapper
        );
        let (handling, words) = if f.table.is_partition() && selected.contains(&f.table.root) {
            (
                Handling::Refused,
                foreign_partition_words(&f.table.root, &f.table.name, &f.server),
            )
        } else if f.table.is_partition() {
            (
                Handling::LeftOut,
                format!(
                    "a partition of {}, which the migration leaves out; {lives}",
                    f.table.root
                ),
            )
        } else {
            (
                Handling::LeftOut,
                format!("{lives}: pgshift copies no rows through it and does not build it on the target. Create the server, its user mapping and the foreign table on the target if the application needs them there (pg_dump --schema-only --table=… prints the table)"),
            )
        };
        out.push(SpecialObject {
            kind: SpecialKind::ForeignTable,
            name: f.table.name.clone(),
            handling,
            words,
            command: None,
        });
    }

    let major = schema::server_major(src).await?;
    for d in read::detaching_partitions(src, major).await? {
        out.push(SpecialObject {
            kind: SpecialKind::DetachingPartition,
            name: d.name.clone(),
            handling: Handling::LeftOut,
            words: format!(
                "a partition of {} whose DETACH PARTITION … CONCURRENTLY did not finish: PostgreSQL no longer shows its rows through {}, so pgshift, which reads {} with its partitions, moves none of them. Finish the detach; it is then a table of its own that the patterns can select",
                d.parent, d.parent, d.parent
            ),
            command: Some(d.finalize),
        });
    }
    Ok(out)
}

/// Refuses tables with a partition that is a foreign table: foreign tables take no `TRUNCATE`
/// trigger, so capture cannot be installed, and copying their rows would move remote data into
/// a local table (or, through the same foreign table on the target, write it twice).
pub async fn check_foreign_partitions(
    src: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<()> {
    let names: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    let found = read::foreign_partitions(src, &names).await?;
    if found.is_empty() {
        return Ok(());
    }
    Err(EngineError::invalid(
        "foreign_partition",
        found
            .iter()
            .map(|(table, partition, server)| foreign_partition_words(table, partition, server))
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

fn foreign_partition_words(table: &str, partition: &str, server: &str) -> String {
    format!(
        "{partition}, a partition of {table}, is a foreign table (its rows live on foreign server {server}): pgshift can neither capture its changes (a foreign table takes no TRUNCATE trigger) nor copy its rows without moving remote data into a local table; detach it from {table} or leave {table} out of the migration"
    )
}

fn large_objects(lo: &read::LargeObjects, on_target: i64, scope: &Scope<'_>) -> SpecialObject {
    let plural = if lo.count == 1 { "" } else { "s" };
    SpecialObject {
        kind: SpecialKind::LargeObjects,
        name: format!("{} large object{plural}", lo.count),
        handling: Handling::LeftOut,
        words: format!(
            "pgshift does not move large objects: no trigger can capture their changes (they live in pg_largeobject, written through lo_* functions), and the cutover's freeze does not stop those writes. The target holds {on_target} now. Copy them with the command below while nothing writes them, after the cutover and before the application creates large objects on the target: pg_restore keeps their OIDs, which the migrated rows refer to, and refuses an OID the target already uses. Run it with a pg_dump at least as new as the source, as a role that can read them (they are owned by {}), the passwords in ~/.pgpass or PGPASSWORD",
            lo.owners.join(", ")
        ),
        command: Some(large_objects_command(scope.source, scope.target)),
    }
}

/// `pg_dump` of the large objects alone (`--exclude-table-data` leaves every table's rows and
/// every sequence's value out), restored into the target with their OIDs.
fn large_objects_command(source: &DumpSource, target: &DumpSource) -> String {
    format!(
        "pg_dump --format=custom --data-only -b --exclude-table-data='*.*' --dbname={} | pg_restore --data-only --no-owner --exit-on-error --dbname={}",
        shell_quote(source.uri()),
        shell_quote(target.uri())
    )
}

/// A word for a POSIX shell: in single quotes, each `'` written `'\''`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_quotes_its_connection_strings_for_the_shell() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let source =
            DumpSource::from_dsn("postgresql://app:secret@db1:5432/postgres", "shop").unwrap();
        let target = DumpSource::from_dsn("postgresql://app@db2/postgres", "o'neil").unwrap();
        let command = large_objects_command(&source, &target);
        assert!(!command.contains("secret"), "{command}");
        assert!(
            command.starts_with("pg_dump --format=custom --data-only -b --exclude-table-data='*.*' --dbname='postgresql://app@db1:5432/shop' | pg_restore"),
            "{command}"
        );
        assert!(
            command.ends_with("--dbname='postgresql://app@db2/o%27neil'"),
            "{command}"
        );
    }
}
