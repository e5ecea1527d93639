//! Engine layer (target schema): building the plan on the target. Before the copy, what the
//! tables need, in one transaction (all or nothing; retried with the run). After it, each other
//! object once the tables it waits for are copied (or synced), one transaction each, recorded in
//! the bookkeeping schema (`schema_object`) with its state and, when it failed, the error: the
//! status, the API and the cutover's gates read it there.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};
use tokio_util::sync::CancellationToken;

use super::plan::Plan;
use crate::engine::error::Context;
use crate::engine::status::StatusHandle;
use crate::engine::target::{self, TableState};
use crate::engine::{pg, quote_ident, EngineError, EngineResult};

const OBJECTS_SQL: &str = include_str!("../../../../../sql/target/schema_objects.sql");

/// An object that could not be built: what, the statement, and PostgreSQL's words.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ObjectFailure {
    pub object: String,
    pub statement: String,
    pub error: String,
}

/// Kinds of object that may already exist on the target (another migration into the same
/// database built them): the one there is kept.
const SHARED_KINDS: &[&str] = &[
    "SCHEMA",
    "TYPE",
    "DOMAIN",
    "FUNCTION",
    "PROCEDURE",
    "AGGREGATE",
    "COLLATION",
    "SEQUENCE",
    "COMMENT",
];

/// The SQLSTATEs of "already exists".
fn already_exists(code: Option<&str>) -> bool {
    matches!(code, Some("42P06" | "42710" | "42723" | "42P07"))
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// PostgreSQL's message with its detail, for people.
fn words(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
            match pg.and_then(|p| p.detail()) {
                Some(detail) => format!("{} ({detail})", db.message()),
                None => db.message().to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// The preamble's settings for one transaction only.
fn local(setting: &str) -> String {
    if let Some(rest) = setting.strip_prefix("SET ") {
        format!("SET LOCAL {rest}")
    } else {
        setting.replace(", false)", ", true)")
    }
}

/// Builds what the tables need before the copy, in one transaction on a connection of its own.
pub async fn build_before(target: &PgConnectOptions, plan: &Plan) -> EngineResult<()> {
    let mut conn = pg::connect("the target", target).await?;
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening a transaction to build the schema on the target".into())?;
    for setting in &plan.preamble {
        pg::run_script(&mut tx, &local(setting))
            .await
            .context(|| format!("preparing the session for the schema ({setting})"))?;
    }
    for item in &plan.before {
        sqlx::query("SAVEPOINT pgshift_object")
            .execute(&mut *tx)
            .await
            .context(|| "taking a savepoint".into())?;
        match pg::run_script(&mut tx, &item.statement).await {
            Ok(_) => {}
            Err(e)
                if SHARED_KINDS.contains(&item.kind.as_str())
                    && already_exists(sqlstate(&e).as_deref()) =>
            {
                tracing::info!(object = %item.name, "already on the target; kept as it is");
                sqlx::query("ROLLBACK TO SAVEPOINT pgshift_object")
                    .execute(&mut *tx)
                    .await
                    .context(|| "rolling back to a savepoint".into())?;
                continue;
            }
            Err(e) => {
                return Err(EngineError::invalid(
                    "schema_build_failed",
                    format!(
                        "building {} on the target failed: {}; statement: {}",
                        item.name,
                        words(&e),
                        item.statement
                    ),
                ))
            }
        }
        sqlx::query("RELEASE SAVEPOINT pgshift_object")
            .execute(&mut *tx)
            .await
            .context(|| "releasing a savepoint".into())?;
    }
    tx.commit()
        .await
        .context(|| "committing the schema built before the copy".into())
}

/// Whether the bookkeeping of the objects built after the copy is on the target.
pub async fn has_objects(conn: &mut PgConnection, schema: &str) -> EngineResult<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = $1 AND c.relname = 'schema_object')",
    )
    .bind(schema)
    .fetch_one(conn)
    .await
    .context(|| "looking for the schema's bookkeeping on the target".into())
}

/// Records the objects to build after the copy (and the session settings their statements are
/// written for) in the bookkeeping schema `schema`, in one transaction.
pub async fn record(conn: &mut PgConnection, schema: &str, plan: &Plan) -> EngineResult<()> {
    let quoted = quote_ident(schema);
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening a transaction on the target".into())?;
    pg::run_script(&mut tx, &OBJECTS_SQL.replace("@schema@", &quoted))
        .await
        .context(|| "creating the schema's bookkeeping on the target".into())?;
    for (no, setting) in plan.preamble.iter().enumerate() {
        sqlx::query(&format!(
            "INSERT INTO {quoted}.schema_preamble (line_no, statement) VALUES ($1, $2)"
        ))
        .bind(no as i32)
        .bind(setting)
        .execute(&mut *tx)
        .await
        .context(|| "recording the schema's session settings".into())?;
    }
    for (no, item) in plan.after.iter().enumerate() {
        sqlx::query(&format!(
            "INSERT INTO {quoted}.schema_object (object_no, kind, name, tables, wait_for, statement)
             VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(no as i32 + 1)
        .bind(&item.kind)
        .bind(&item.name)
        .bind(&item.tables)
        .bind(item.wait.as_str())
        .bind(&item.statement)
        .execute(&mut *tx)
        .await
        .context(|| "recording an object to build after the copy".into())?;
    }
    tx.commit()
        .await
        .context(|| "committing the schema's bookkeeping".into())
}

/// Records the objects to build after the copy of tables added to a running migration, after
/// the others (numbered on from the highest), in one transaction. The session settings are
/// those recorded with the migration (pg_dump writes the same ones).
pub async fn append(conn: &mut PgConnection, schema: &str, plan: &Plan) -> EngineResult<()> {
    let quoted = quote_ident(schema);
    let mut tx = conn
        .begin()
        .await
        .context(|| "opening a transaction on the target".into())?;
    let last: i32 = sqlx::query_scalar(&format!(
        "SELECT coalesce(max(object_no), 0) FROM {quoted}.schema_object"
    ))
    .fetch_one(&mut *tx)
    .await
    .context(|| "reading the objects to build".into())?;
    for (no, item) in plan.after.iter().enumerate() {
        sqlx::query(&format!(
            "INSERT INTO {quoted}.schema_object (object_no, kind, name, tables, wait_for, statement)
             VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(last + no as i32 + 1)
        .bind(&item.kind)
        .bind(&item.name)
        .bind(&item.tables)
        .bind(item.wait.as_str())
        .bind(&item.statement)
        .execute(&mut *tx)
        .await
        .context(|| "recording an object to build after the copy".into())?;
    }
    tx.commit()
        .await
        .context(|| "committing the schema's bookkeeping".into())
}

/// Failed objects are tried again by a new run (the operator may have fixed the cause).
pub async fn retry_failed(conn: &mut PgConnection, schema: &str) -> EngineResult<()> {
    sqlx::query(&format!(
        "UPDATE {}.schema_object SET state = 'pending' WHERE state = 'failed'",
        quote_ident(schema)
    ))
    .execute(conn)
    .await
    .context(|| "marking failed objects to be tried again".into())?;
    Ok(())
}

/// One row of `schema_object`.
#[derive(Debug, Clone)]
struct Object {
    no: i32,
    name: String,
    tables: Vec<i32>,
    wait_for: String,
    statement: String,
    state: String,
    error: Option<String>,
}

async fn objects(conn: &mut PgConnection, schema: &str) -> EngineResult<Vec<Object>> {
    let rows = sqlx::query(&format!(
        "SELECT object_no, name, tables, wait_for, statement, state, error
           FROM {}.schema_object ORDER BY object_no",
        quote_ident(schema)
    ))
    .fetch_all(conn)
    .await
    .context(|| "reading the objects to build on the target".into())?;
    Ok(rows
        .iter()
        .map(|r| Object {
            no: r.get(0),
            name: r.get(1),
            tables: r.get(2),
            wait_for: r.get(3),
            statement: r.get(4),
            state: r.get(5),
            error: r.get(6),
        })
        .collect())
}

/// Per table: the objects still to build, and those that failed.
pub type TableObjects = BTreeMap<i32, (Vec<String>, Vec<ObjectFailure>)>;

/// What is left to build on the target, per table number (`all_tables`: where an object that
/// waits for no table is shown). Empty when the schema was not created by pgshift.
pub async fn outstanding(
    conn: &mut PgConnection,
    schema: &str,
    all_tables: &[i32],
) -> EngineResult<TableObjects> {
    let mut out = TableObjects::new();
    if !has_objects(conn, schema).await? {
        return Ok(out);
    }
    for o in objects(conn, schema).await? {
        if o.state == "built" {
            continue;
        }
        let tables = if o.tables.is_empty() {
            all_tables
        } else {
            &o.tables[..]
        };
        for no in tables {
            let (pending, failed) = out.entry(*no).or_default();
            if o.state == "failed" {
                failed.push(ObjectFailure {
                    object: o.name.clone(),
                    statement: o.statement.clone(),
                    error: o.error.clone().unwrap_or_default(),
                });
            } else {
                pending.push(o.name.clone());
            }
        }
    }
    Ok(out)
}

/// Puts `objects` into the status's tables.
pub fn show(status: &StatusHandle, objects: &TableObjects) {
    status.update(|s| {
        for t in &mut s.tables {
            let (pending, failed) = objects.get(&t.table_no).cloned().unwrap_or_default();
            t.objects_pending = pending;
            t.objects_failed = failed;
        }
    });
}

/// Builds each object once the tables it waits for are far enough, until none is left.
pub struct Builder {
    pub target: PgConnectOptions,
    pub schema: String,
    pub status: StatusHandle,
    pub table_nos: Vec<i32>,
    pub every: Duration,
}

impl Builder {
    /// Runs until every object is built or failed, or until cancelled. Boxed as Send so that
    /// the compiler checks it with concrete lifetimes (sqlx's executors and higher-ranked ones
    /// do not mix inside a spawned task).
    pub fn run(
        self,
        cancel: CancellationToken,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = EngineResult<()>> + Send>> {
        Box::pin(async move { self.run_until_built(cancel).await })
    }

    async fn run_until_built(self, cancel: CancellationToken) -> EngineResult<()> {
        let mut conn = pg::connect("the target", &self.target).await?;
        let quoted = quote_ident(&self.schema);
        let preamble: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT statement FROM {quoted}.schema_preamble ORDER BY line_no"
        ))
        .fetch_all(&mut conn)
        .await
        .context(|| "reading the schema's session settings".into())?;
        for setting in &preamble {
            pg::run_script(&mut conn, setting)
                .await
                .context(|| format!("preparing the session for the schema ({setting})"))?;
        }
        // An object waits for the apply's locks at most this long, then comes again next time:
        // the apply never waits long behind an index build that cannot start.
        sqlx::query("SET lock_timeout = '2s'")
            .execute(&mut conn)
            .await
            .context(|| "setting lock_timeout".into())?;
        loop {
            let left = self.pass(&mut conn).await?;
            show(
                &self.status,
                &outstanding(&mut conn, &self.schema, &self.table_nos).await?,
            );
            if !left {
                return Ok(());
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// Builds every object whose tables are ready; whether any is still pending.
    async fn pass(&self, conn: &mut PgConnection) -> EngineResult<bool> {
        let progress = target::table_progress(conn, &self.schema).await?;
        let state = |no: &i32| progress.iter().find(|p| p.table_no == *no).map(|p| p.state);
        let mut left = false;
        // Tables with an object that had to wait for a lock in this pass: their later objects
        // wait for the next pass, since one may need it (the archive's order is an order the
        // dependencies allow: a materialized view before its refresh, a foreign key added
        // `NOT VALID` before its validation).
        let mut held: Vec<i32> = Vec::new();
        for o in objects(conn, &self.schema).await? {
            if o.state != "pending" {
                continue;
            }
            if o.tables.iter().any(|no| held.contains(no)) {
                left = true;
                continue;
            }
            let ready = o.tables.iter().all(|no| {
                matches!(
                    (o.wait_for.as_str(), state(no)),
                    ("synced", Some(TableState::Synced))
                        | ("copied", Some(TableState::CatchingUp | TableState::Synced))
                )
            });
            if !ready {
                left = true;
                continue;
            }
            if !self.build(conn, &o).await? {
                left = true;
                held.extend(&o.tables);
            }
        }
        Ok(left)
    }

    /// Builds one object and records it, in one transaction; a failure is recorded with its
    /// error. False when it has to wait (a lock it could not get, a deadlock).
    async fn build(&self, conn: &mut PgConnection, o: &Object) -> EngineResult<bool> {
        let quoted = quote_ident(&self.schema);
        let mut tx = conn
            .begin()
            .await
            .context(|| "opening a transaction on the target".into())?;
        let outcome = pg::run_script(&mut tx, &o.statement).await;
        match outcome {
            Ok(_) => {
                sqlx::query(&format!(
                    "UPDATE {quoted}.schema_object SET state = 'built', error = NULL, built_at = clock_timestamp()
                      WHERE object_no = $1"
                ))
                .bind(o.no)
                .execute(&mut *tx)
                .await
                .context(|| "recording a built object".into())?;
                tx.commit()
                    .await
                    .context(|| format!("committing {}", o.name))?;
                tracing::info!(object = %o.name, "built on the target");
                Ok(true)
            }
            Err(e) => {
                tx.rollback()
                    .await
                    .context(|| "rolling back a failed object".into())?;
                if matches!(sqlstate(&e).as_deref(), Some("55P03" | "40P01")) {
                    tracing::debug!(object = %o.name, error = %e, "waiting for locks; trying again later");
                    return Ok(false);
                }
                let error = words(&e);
                tracing::warn!(object = %o.name, %error, "cannot build on the target");
                sqlx::query(&format!(
                    "UPDATE {quoted}.schema_object SET state = 'failed', error = $2 WHERE object_no = $1"
                ))
                .bind(o.no)
                .bind(&error)
                .execute(&mut *conn)
                .await
                .context(|| "recording a failed object".into())?;
                Ok(true)
            }
        }
    }
}
