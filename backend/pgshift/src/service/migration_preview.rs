//! Service layer: the new-migration form's preview: which source tables the patterns select, and
//! for each one whether the engine will accept it or why not, using the same checks as `create`.

use serde::{Deserialize, Serialize};

use super::migrations::EndpointRef;
use super::{clusters, App, ServiceError, ServiceResult};
use crate::engine::cutover::foreign_keys;
use crate::engine::special::{self, SpecialObject};
use crate::engine::{catalog, pg, schema, EngineError};
use crate::store::SchemaMode;

/// At most this many tables are checked one by one (each check is a few round trips).
pub const MAX_CHECKED: usize = 200;

/// What to preview: a migration's source, target, patterns and schema mode, without a name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    pub source: EndpointRef,
    pub target: EndpointRef,
    /// Patterns over `schema.table`, `*` matching any run of characters; None = every table.
    pub tables: Option<Vec<String>>,
    /// `create` or `existing`; None = what creating would choose.
    pub schema: Option<SchemaMode>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PreviewTable {
    pub name: String,
    /// How rows are identified: `primary key`, `unique index <name>` or `whole row`.
    pub identity: String,
    /// Why the engine will refuse this table; None when it is fine.
    pub problem: Option<String>,
    /// What the operator should know although the table is accepted (a foreign key on the
    /// target that crosses the migration's edge).
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Preview {
    /// `create` or `existing`: what creating the migration with the same choice would do.
    pub schema: &'static str,
    pub tables: Vec<PreviewTable>,
    /// Patterns that select nothing.
    pub unmatched_patterns: Vec<String>,
    /// Source tables the patterns leave out.
    pub not_selected: usize,
    /// More tables matched than were checked.
    pub truncated: bool,
    /// What the migration does not move as rows of its tables, and what happens to each: large
    /// objects, materialized views, unlogged tables, foreign tables, partitions left
    /// half-detached.
    pub special_objects: Vec<SpecialObject>,
}

impl Preview {
    pub fn refused(&self) -> usize {
        self.tables.iter().filter(|t| t.problem.is_some()).count()
    }
}

/// Reads both catalogs and checks each selected table as `create` would. `patterns` empty means
/// every table; `mode` None means the default (create when none of the tables is on the target).
pub async fn preview(
    app: &App,
    source: &EndpointRef,
    target: &EndpointRef,
    patterns: &[String],
    mode: Option<SchemaMode>,
) -> ServiceResult<Preview> {
    let connect = |side: &'static str, e: EndpointRef| async move {
        let cluster = clusters::find(app, &e.cluster)
            .await
            .map_err(|err| match err {
                ServiceError::NotFound(_) => ServiceError::invalid(
                    "unknown_cluster",
                    format!("{side} cluster {:?} is not registered", e.cluster),
                ),
                other => other,
            })?;
        if e.database.is_empty() {
            return Err(ServiceError::invalid(
                "invalid_database",
                format!("{side}.database is empty"),
            ));
        }
        let dsn = app.secrets.decrypt(&cluster.dsn)?;
        let options = pg::options(&dsn, Some(&e.database))?;
        let dump = schema::DumpSource::from_dsn(&dsn, &e.database)?;
        Ok::<_, ServiceError>((pg::connect(side, &options).await?, dump))
    };
    let (mut src, source_at) = connect("source", source.clone()).await?;
    let (mut dst, target_at) = connect("target", target.clone()).await?;
    let all = catalog::user_tables(&mut src).await?;
    let patterns: Vec<String> = patterns
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .take(catalog::MAX_PATTERNS)
        .collect();
    // Matching many patterns against many tables is CPU work: off the async runtime.
    let (all, selected, unmatched_patterns) = tokio::task::spawn_blocking(move || {
        let compiled = patterns
            .iter()
            .map(|p| catalog::TablePattern::new(p))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = all
            .iter()
            .map(catalog::CatalogTable::display_name)
            .collect();
        let selected: Vec<bool> = names
            .iter()
            .map(|n| compiled.is_empty() || compiled.iter().any(|p| p.matches(n)))
            .collect();
        let unmatched: Vec<String> = patterns
            .iter()
            .zip(&compiled)
            .filter(|(_, p)| !names.iter().any(|n| p.matches(n)))
            .map(|(text, _)| text.clone())
            .collect();
        Ok::<_, crate::engine::EngineError>((all, selected, unmatched))
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    let matched: Vec<&catalog::CatalogTable> = all
        .iter()
        .zip(&selected)
        .filter(|(_, s)| **s)
        .map(|(t, _)| t)
        .collect();
    let not_selected = all.len() - matched.len();
    let truncated = matched.len() > MAX_CHECKED;
    let checked_specs = catalog::specs(
        &matched
            .iter()
            .take(MAX_CHECKED)
            .map(|t| (*t).clone())
            .collect::<Vec<_>>(),
    );
    let mode = match mode {
        Some(m) => m,
        None if schema::tables_on_target(&mut dst, &checked_specs)
            .await?
            .is_empty() =>
        {
            SchemaMode::Create
        }
        None => SchemaMode::Existing,
    };
    // Schema "create": what would refuse the whole migration (pg_dump, extensions, privileges).
    let create_problem = match mode {
        SchemaMode::Create if !checked_specs.is_empty() => {
            let pg_bin_dir = app.supervisor.settings().pg_bin_dir.clone();
            match schema::check_create(&mut src, &mut dst, &checked_specs, pg_bin_dir.as_deref())
                .await
            {
                Err(e) => Some(problem_text(e)?),
                Ok(()) => None,
            }
        }
        _ => None,
    };
    let mut tables = Vec::new();
    for t in matched.iter().copied().take(MAX_CHECKED) {
        let spec = catalog::specs(std::slice::from_ref(t));
        let mut notes: Vec<String> = t
            .key_index
            .iter()
            .map(|index| {
                format!(
                    "no primary key: rows are identified by unique index {index} over NOT NULL columns ({})",
                    t.key.join(", ")
                )
            })
            .collect();
        if t.key.is_empty() {
            notes.extend(keyless_notes(&mut src, t).await?);
        }
        let foreign_partition = if t.partitioned {
            special::check_foreign_partitions(&mut src, &spec)
                .await
                .err()
        } else {
            None
        };
        // A foreign partition first: its rows live on another server, whatever the key.
        let problem = if let Some(e) = foreign_partition {
            Some(problem_text(e)?)
        } else if let Err(e) = catalog::check_source(&mut src, &spec).await {
            Some(problem_text(e)?)
        } else if mode == SchemaMode::Create {
            notes.push("built on the target from the source's schema: the table and its key before the copy, its indexes, constraints, triggers and dependent views after it".into());
            create_problem.clone()
        } else if let Err(e) = catalog::check_schema_usage(&mut dst, &spec, "target").await {
            Some(problem_text(e)?)
        } else {
            let differences = schema::compare(&mut src, &mut dst, &spec).await?;
            notes.extend(
                differences
                    .iter()
                    .filter(|d| !d.refused)
                    .map(|d| d.words.clone()),
            );
            if let Some(refused) = schema::differences_error(&differences) {
                Some(refused.to_string())
            } else {
                match catalog::check_target(&mut dst, &spec).await {
                    Err(e) => Some(problem_text(e)?),
                    Ok(()) => {
                        match catalog::check_key_collations(&mut src, &mut dst, &spec).await {
                            Err(e) => Some(problem_text(e)?),
                            Ok(()) => None,
                        }
                    }
                }
            }
        };
        tables.push(PreviewTable {
            name: t.display_name(),
            identity: spec[0].identity(),
            problem,
            notes,
        });
    }
    let checked: Vec<catalog::CatalogTable> = matched
        .iter()
        .take(MAX_CHECKED)
        .map(|t| (*t).clone())
        .collect();
    // Keys on the target's tables: none yet when pgshift builds them.
    let on_target = if mode == SchemaMode::Create {
        Vec::new()
    } else {
        foreign_keys::crossing(&mut dst, &catalog::specs(&checked)).await?
    };
    for key in on_target {
        if let Some(t) = tables.iter_mut().find(|t| t.name == key.migrated_table()) {
            t.notes.push(format!(
                "{} on the target: pgshift applies rows without checking it, so it can end up violated while marked valid; migrate that table too, or keep its rows in step on the target (a cutover gate checks it)",
                key.words()
            ));
        }
    }
    // Every table the patterns select, checked or not: what is special is named for all.
    let all_matched = catalog::specs(&matched.iter().map(|t| (*t).clone()).collect::<Vec<_>>());
    let special_objects = special::list(
        &mut src,
        &mut dst,
        &special::Scope {
            tables: &all_matched,
            mode,
            source: &source_at,
            target: &target_at,
        },
    )
    .await?;
    Ok(Preview {
        schema: mode.as_str(),
        tables,
        unmatched_patterns,
        not_selected,
        truncated,
        special_objects,
    })
}

/// Rows of a table without a key above which applying its updates and deletes is slow unless
/// the target can find rows by an index.
const LARGE_KEYLESS_ROWS: f64 = 100_000.0;

/// What the operator should know about a table without a key.
async fn keyless_notes(
    src: &mut sqlx::PgConnection,
    t: &catalog::CatalogTable,
) -> ServiceResult<Vec<String>> {
    let mut notes = vec!["no primary key and no unique index over NOT NULL columns: replicated with whole-row identity (an update or delete changes exactly one target row equal to the old row; duplicates stay duplicates); copied in one snapshot (a crash restarts its copy), compared as a whole by verification and inside the cutover's freeze".to_string()];
    let rows: f64 = sqlx::query_scalar(
        "SELECT coalesce(sum(c.reltuples) FILTER (WHERE c.reltuples > 0), 0)::float8
           FROM pg_partition_tree($1::regclass) p JOIN pg_class c ON c.oid = p.relid",
    )
    .bind(format!(
        "{}.{}",
        crate::base::quote_ident(&t.schema),
        crate::base::quote_ident(&t.name)
    ))
    .fetch_one(&mut *src)
    .await
    .map_err(|e| EngineError::Database {
        context: format!("estimating the size of {}", t.display_name()),
        source: e,
    })?;
    if rows >= LARGE_KEYLESS_ROWS {
        notes.push(format!(
            "large table without a key (about {} rows): each batch that updates or deletes its rows looks them up on the target, which reads the whole table unless an index covers some of its NOT NULL columns; its copy holds one snapshot on the source for its whole length, and the cutover compares every row inside the freeze. Add a primary key if you can",
            rows.round() as i64
        ));
    }
    Ok(notes)
}

/// A refusal the operator can act on becomes the table's problem; a failing server fails the
/// whole preview.
fn problem_text(err: EngineError) -> ServiceResult<String> {
    match err {
        EngineError::Invalid { .. } | EngineError::MissingPrivilege(_) => Ok(err.to_string()),
        other => Err(other.into()),
    }
}
