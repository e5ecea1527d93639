//! Engine layer: the target's schema (issue 10). With schema `create` pgshift builds on the
//! target what the selected tables need, from the source's own `pg_dump --schema-only` cut down
//! to their objects: schemas, extensions, types, enums, domains, functions, sequences, the
//! tables and partitions with their keys before the copy (`build_before`); after each table's
//! copy its secondary indexes, unique and check constraints, triggers, rules, policies and
//! privileges, foreign keys `NOT VALID` once both ends are copied and validated once both are
//! synced, and the views, materialized views (with their indexes; refreshed once their tables
//! are synced when they hold rows on the source) and functions that use the tables
//! (`Builder`). With schema `existing`
//! the tables are the operator's, and `compare` names every difference from the source's.
//!
//! Files: `dump.rs` runs pg_dump and pg_restore, `toc.rs` reads their output, `select.rs` picks
//! the objects from the source's catalog (read by `depend.rs`), `attach.rs` the entries that go with them, `plan.rs` turns them into statements, `build.rs`
//! builds them and keeps their state on the target, `compare.rs` compares two sides' tables.

mod attach;
mod build;
mod compare;
mod depend;
mod dump;
mod plan;
mod select;
mod toc;

use std::path::Path;

use sqlx::postgres::PgConnectOptions;
use sqlx::PgConnection;

pub use build::{outstanding, show, Builder, ObjectFailure, TableObjects};
pub use compare::{compare, differences_error, Difference, TableDifferences};
pub use dump::{find as find_tools, tools_for, DumpSource, DumpTools};
pub use plan::Plan;
pub use select::MaterializedView;

use super::error::Context;
use super::{catalog, quote_ident, EngineError, EngineResult};
use crate::store::TableSpec;

/// The source's major version (`15` for 15.20).
pub async fn server_major(conn: &mut PgConnection) -> EngineResult<u32> {
    let num: String = sqlx::query_scalar("SHOW server_version_num")
        .fetch_one(conn)
        .await
        .context(|| "reading the server version".into())?;
    Ok(num.parse::<u32>().unwrap_or(0) / 10_000)
}

/// Reads the source's schema for `tables` with pg_dump: what to build before the copy and after.
pub async fn read_plan(
    src: &mut PgConnection,
    pg_bin_dir: Option<&Path>,
    source: &DumpSource,
    tables: &[TableSpec],
) -> EngineResult<Plan> {
    let major = server_major(src).await?;
    let tools = tools_for(pg_bin_dir, major).await?;
    let selection = select::select(src, tables).await?;
    let dump = dump::SchemaDump::take(&tools, source, &selection.excluded_tables).await?;
    let mut plan = plan::plan(&dump, &selection).await?;
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *src)
        .await
        .context(|| "reading the source role's name".into())?;
    plan.leave_out_grants_to(&role);
    tracing::info!(
        before = plan.before.len(),
        after = plan.after.len(),
        pg_dump = %tools.version,
        "read the source's schema"
    );
    Ok(plan)
}

/// The materialized views schema "create" builds (they read migrated tables), by oid.
pub async fn materialized_views(
    src: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<std::collections::BTreeMap<u32, MaterializedView>> {
    Ok(select::select(src, tables).await?.materialized_views)
}

/// The selected tables that exist on the target (`schema.table`).
pub async fn tables_on_target(
    dst: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Vec<String>> {
    let names: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    sqlx::query_scalar(
        "SELECT format('%s.%s', n.nspname, c.relname)
           FROM unnest($1::text[]) AS t(name)
           JOIN pg_catalog.pg_class c ON c.oid = to_regclass(t.name)
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          ORDER BY 1",
    )
    .bind(&names)
    .fetch_all(dst)
    .await
    .context(|| "looking for the migrated tables on the target".into())
}

/// The run's step before the target's bookkeeping is installed: builds what the tables need,
/// unless an earlier attempt did (every table is there). The plan, when read.
pub async fn prepare(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    target: &PgConnectOptions,
    pg_bin_dir: Option<&Path>,
    source: &DumpSource,
    tables: &[TableSpec],
) -> EngineResult<Option<Plan>> {
    let present = tables_on_target(dst, tables).await?;
    if present.len() == tables.len() {
        return Ok(None);
    }
    if !present.is_empty() {
        return Err(EngineError::invalid(
            "target_partly_built",
            format!(
                "some migrated tables exist on the target ({}) and others do not; pgshift builds all of them itself (schema \"create\"): drop these, or create the others and use schema \"existing\"",
                present.join(", ")
            ),
        ));
    }
    let plan = read_plan(src, pg_bin_dir, source, tables).await?;
    build::build_before(target, &plan).await?;
    tracing::info!(
        objects = plan.before.len(),
        "built the tables on the target"
    );
    Ok(Some(plan))
}

/// The run's step after the bookkeeping is installed: the objects to build after the copy are
/// recorded (read again from the source when `plan` is None and they are not), and those that
/// failed are tried again.
pub async fn record_after(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    schema: &str,
    plan: Option<Plan>,
    pg_bin_dir: Option<&Path>,
    source: &DumpSource,
    tables: &[TableSpec],
) -> EngineResult<()> {
    if !build::has_objects(dst, schema).await? {
        let plan = match plan {
            Some(p) => p,
            None => read_plan(src, pg_bin_dir, source, tables).await?,
        };
        build::record(dst, schema, &plan).await?;
    }
    build::retry_failed(dst, schema).await
}

/// Schema "create", tables added to a running migration (`tables`, none of them in its
/// bookkeeping yet): builds those missing on the target with what they need, and records their
/// objects to build after the copy beside the others' (`schema`: the bookkeeping's), unless an
/// earlier try did. A table that is there already (left by an earlier time in the migration) is
/// kept as it is; the service compared it with the source's. Objects that also need a table the
/// migration had before (a foreign key between the two) are not in the source's schema cut down
/// to the added tables, and are not built.
pub async fn prepare_added(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    target: &PgConnectOptions,
    schema: &str,
    pg_bin_dir: Option<&Path>,
    source: &DumpSource,
    tables: &[TableSpec],
) -> EngineResult<()> {
    let present = tables_on_target(dst, tables).await?;
    let missing: Vec<TableSpec> = tables
        .iter()
        .filter(|t| !present.contains(&format!("{}.{}", t.schema, t.name)))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let nos: Vec<i32> = missing.iter().map(|t| t.no).collect();
    // Recorded first, with the run stopped (nothing builds meanwhile): a crash before the build
    // finds them recorded and builds the tables only.
    let recorded = !build::has_objects(dst, schema).await?
        || sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM {}.schema_object WHERE tables && $1)",
            quote_ident(schema)
        ))
        .bind(&nos)
        .fetch_one(&mut *dst)
        .await
        .context(|| "looking for the added tables' objects".into())?;
    let plan = read_plan(src, pg_bin_dir, source, &missing).await?;
    if !recorded {
        build::append(dst, schema, &plan).await?;
    }
    build::build_before(target, &plan).await?;
    tracing::info!(
        objects = plan.before.len(),
        "built the added tables on the target"
    );
    Ok(())
}

/// Whether this migration's bookkeeping lists objects to build (its schema is pgshift's).
pub async fn builds_objects(dst: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    build::has_objects(dst, schema).await
}

/// The checks schema `create` adds at creation: a pg_dump at least as new as the source, none of
/// the tables on the target yet, the target role may create what they need (the extensions
/// among it) and run pgshift's apply.
pub async fn check_create(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    tables: &[TableSpec],
    pg_bin_dir: Option<&Path>,
) -> EngineResult<()> {
    let major = server_major(src).await?;
    tools_for(pg_bin_dir, major).await?;
    let present = tables_on_target(dst, tables).await?;
    if !present.is_empty() {
        return Err(EngineError::invalid(
            "target_table_exists",
            format!(
                "schema \"create\" builds the tables on the target itself, and these exist there already: {}; drop them, or use schema \"existing\"",
                present.join(", ")
            ),
        ));
    }
    let (user, db, create, temp): (String, String, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, current_database()::text,
                has_database_privilege(current_database(), 'CREATE'),
                has_database_privilege(current_database(), 'TEMP')",
    )
    .fetch_one(&mut *dst)
    .await
    .context(|| "checking database privileges on the target".into())?;
    let mut missing = Vec::new();
    for (ok, privilege) in [(create, "CREATE"), (temp, "TEMP")] {
        if !ok {
            missing.push(format!(
                "{privilege} on database {db:?} (GRANT {privilege} ON DATABASE {} TO {})",
                quote_ident(&db),
                quote_ident(&user)
            ));
        }
    }
    // The tables go into their schemas: one the target has already must let the role create in it
    // (PostgreSQL 15's `public` does not by default) and use it; a missing one the role creates,
    // and owns.
    let schemas: Vec<String> = tables.iter().map(|t| t.schema.clone()).collect();
    let closed: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text,
                array_to_string(ARRAY(SELECT p FROM unnest(ARRAY['USAGE', 'CREATE']) p
                                       WHERE NOT has_schema_privilege(n.oid, p)), ', ')
           FROM pg_catalog.pg_namespace n
          WHERE n.nspname = ANY($1)
            AND NOT (has_schema_privilege(n.oid, 'CREATE') AND has_schema_privilege(n.oid, 'USAGE'))
          ORDER BY 1",
    )
    .bind(&schemas)
    .fetch_all(&mut *dst)
    .await
    .context(|| "checking schema privileges on the target".into())?;
    for (schema, lacking) in closed {
        missing.push(format!(
            "{lacking} on schema {schema:?}, where the tables go (GRANT {lacking} ON SCHEMA {} TO {})",
            quote_ident(&schema),
            quote_ident(&user)
        ));
    }
    if !catalog::can_silence_triggers(dst).await? {
        missing.push(catalog::replication_role_missing(&user));
    }
    if !missing.is_empty() {
        return Err(EngineError::MissingPrivilege(format!(
            "the target role {user:?} lacks: {}",
            missing.join(", ")
        )));
    }
    let selection = select::select(src, tables).await?;
    check_extensions(dst, &selection.extensions, &user).await
}

/// Refuses, with the reason, an extension the tables need that the target role cannot create.
async fn check_extensions(
    dst: &mut PgConnection,
    extensions: &std::collections::BTreeSet<String>,
    user: &str,
) -> EngineResult<()> {
    let mut refused = Vec::new();
    for name in extensions {
        let (installed, available, trusted, superuser): (bool, bool, bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = $1),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = $1),
                    coalesce((SELECT v.trusted FROM pg_catalog.pg_available_extension_versions v
                                JOIN pg_catalog.pg_available_extensions a ON a.name = v.name AND a.default_version = v.version
                               WHERE v.name = $1), false),
                    (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)",
        )
        .bind(name)
        .fetch_one(&mut *dst)
        .await
        .context(|| format!("looking for extension {name} on the target"))?;
        if installed || (available && (trusted || superuser)) {
            continue;
        }
        refused.push(if !available {
            format!("extension {name} is not available on the target server: install its package there (the tables use it)")
        } else {
            format!(
                "extension {name} is not trusted, so only a superuser can create it and the target role {user:?} is none: run CREATE EXTENSION {} in the target database as a superuser first",
                quote_ident(name)
            )
        });
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(EngineError::invalid(
        "extension_unavailable",
        refused.join("; "),
    ))
}
