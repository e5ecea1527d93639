//! Engine layer (cutover): preflight gates: everything checked before the cutover changes anything.
//! Each gate says whether it passed and why not, in words an operator can act on.

use serde::Serialize;
use sqlx::PgConnection;

use super::foreign_keys;
use super::sequences;
use super::wraparound;
use crate::engine::error::Context;
use crate::engine::{catalog, EngineResult, MigrationStatus, RuntimeState};
use crate::store::TableSpec;

#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    pub name: &'static str,
    pub passed: bool,
    /// Why it failed, or what was found when it passed.
    pub reason: String,
}

impl Gate {
    pub(super) fn new(name: &'static str, passed: bool, reason: impl Into<String>) -> Self {
        Self {
            name,
            passed,
            reason: reason.into(),
        }
    }
}

/// What the gates look at.
pub struct GateInput<'a> {
    pub tables: &'a [TableSpec],
    /// The migration's live status in this process; `None` when it does not run here.
    pub status: Option<&'a MigrationStatus>,
    pub max_lag_seconds: f64,
    /// Transactions holding a migrated table longer than this stall the freeze.
    pub long_transaction_seconds: f64,
    pub reverse: bool,
    /// Count the rows violating foreign keys that cross the migration's edge (a scan of each
    /// such table); without it the gate only names the keys.
    pub foreign_key_rows: bool,
}

/// Runs every gate (all of them, so the operator sees every problem at once).
pub async fn check(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    input: &GateInput<'_>,
) -> EngineResult<Vec<Gate>> {
    let mut gates = Vec::new();
    match input.status {
        None => gates.push(Gate::new(
            "running",
            false,
            "the migration is not running in this pgshift process; start or resume it first",
        )),
        Some(status) => {
            let waiting: Vec<String> = status
                .tables
                .iter()
                .filter(|t| t.state != "synced")
                .map(|t| format!("{} ({})", t.name, t.state))
                .collect();
            gates.push(if waiting.is_empty() {
                Gate::new(
                    "tables_synced",
                    true,
                    format!("{} tables synced", status.tables.len()),
                )
            } else {
                Gate::new(
                    "tables_synced",
                    false,
                    format!("not synced yet: {}", waiting.join(", ")),
                )
            });
            gates.push(match status.lag_seconds {
                Some(lag) if lag <= input.max_lag_seconds => {
                    Gate::new("lag", true, format!("lag {lag:.3} s"))
                }
                Some(lag) => Gate::new(
                    "lag",
                    false,
                    format!(
                        "lag {lag:.3} s is over the threshold of {} s",
                        input.max_lag_seconds
                    ),
                ),
                None => Gate::new(
                    "lag",
                    false,
                    "no lag measured yet; wait for the first ticks",
                ),
            });
            let failing = status.runtime == RuntimeState::Retrying || status.error.is_some();
            gates.push(if failing {
                Gate::new(
                    "apply_errors",
                    false,
                    format!(
                        "the migration is failing: {}",
                        status.error.as_deref().unwrap_or("retrying")
                    ),
                )
            } else {
                Gate::new("apply_errors", true, "no errors")
            });
        }
    }
    gates.push(long_transactions(src, input).await?);
    gates.push(wraparound::gate(src, input.tables).await?);
    gates.push(replica_sessions(src, input).await?);
    gates.push(target_ready(dst, input.tables).await?);
    if let Some(status) = input.status {
        gates.push(target_schema(status));
    }
    gates.push(foreign_keys(dst, input).await?);
    let unsettable = sequences_unsettable(dst, input.tables).await?;
    gates.push(match sequences::drift(src, dst, input.tables).await {
        Ok(all) => {
            // Checked before anything changes: the step after the freeze can neither create
            // a sequence nor grant itself the right to set one.
            let missing = sequences::missing(&all);
            if let Some(grant) = unsettable {
                Gate::new("sequences", false, format!("the target role lacks {grant}"))
            } else if missing.is_empty() {
                Gate::new(
                    "sequences",
                    true,
                    format!(
                        "{} sequences readable; {} behind on the target, moved at the cutover",
                        all.len(),
                        all.iter().filter(|s| s.behind).count()
                    ),
                )
            } else {
                Gate::new(
                    "sequences",
                    false,
                    format!(
                        "missing on the target (create them there): {}",
                        missing.join(", ")
                    ),
                )
            }
        }
        Err(e) => Gate::new("sequences", false, e.to_string()),
    });
    if input.reverse {
        gates.push(reverse_ready(src, dst, input.tables).await?);
    }
    Ok(gates)
}

async fn current_user(conn: &mut PgConnection) -> EngineResult<String> {
    sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(conn)
        .await
        .context(|| "reading the role's name".into())
}

/// The grant the target role needs to set the sequences the cutover moves forward, if any.
async fn sequences_unsettable(
    dst: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Option<String>> {
    let user = current_user(dst).await?;
    let missing = sequences::missing_privileges(dst, tables, &["SELECT", "UPDATE"], &user).await?;
    Ok((!missing.is_empty()).then(|| missing.join(", ")))
}

/// Transactions that hold a lock on a migrated table that the freeze would wait for, and began
/// longer ago than the threshold.
async fn long_transactions(src: &mut PgConnection, input: &GateInput<'_>) -> EngineResult<Gate> {
    let names: Vec<String> = input.tables.iter().map(|t| t.sql_name()).collect();
    // Writers of a partition lock the partition, not its parent; a prepared transaction
    // (PREPARE TRANSACTION) holds its locks with no session in pg_stat_activity: its lock rows
    // carry no pid and are tied to it through the lock on its transaction id.
    let found: Vec<String> = sqlx::query_scalar(
        "WITH migrated AS (SELECT unnest($1::text[])::regclass AS rel),
              rels AS (SELECT rel AS relid FROM migrated
                       UNION SELECT p.relid FROM migrated m, pg_partition_tree(m.rel) p),
              held AS (SELECT * FROM pg_locks
                        WHERE relation IN (SELECT relid FROM rels)
                          AND mode NOT IN ('AccessShareLock', 'RowShareLock'))
         SELECT DISTINCT format('pid %s (%s) open %s s', a.pid, a.usename,
                                round(extract(epoch FROM clock_timestamp() - a.xact_start)))
           FROM held l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE a.pid <> pg_backend_pid()
            AND a.xact_start < clock_timestamp() - make_interval(secs => $2)
         UNION ALL
         SELECT DISTINCT format('prepared transaction %L (%s) prepared %s s ago', p.gid, p.owner,
                                round(extract(epoch FROM clock_timestamp() - p.prepared)))
           FROM held l
           JOIN pg_locks x ON x.virtualtransaction = l.virtualtransaction AND x.locktype = 'transactionid'
           JOIN pg_prepared_xacts p ON p.transaction = x.transactionid
          WHERE l.pid IS NULL AND p.prepared < clock_timestamp() - make_interval(secs => $2)
          ORDER BY 1",
    )
    .bind(&names)
    .bind(input.long_transaction_seconds)
    .fetch_all(&mut *src)
    .await
    .context(|| "looking for long transactions on the source".into())?;
    if found.is_empty() {
        // pg_stat_activity hides other roles' transaction start from a role without
        // pg_read_all_stats: their transactions cannot be seen here, only in the freeze's wait.
        let sees_all: bool = sqlx::query_scalar("SELECT pg_has_role('pg_read_all_stats', 'USAGE')")
            .fetch_one(&mut *src)
            .await
            .context(|| "reading the source role's view of other sessions".into())?;
        if sees_all {
            return Ok(Gate::new("long_transactions", true, "none"));
        }
        let user = current_user(src).await?;
        return Ok(Gate::new(
            "long_transactions",
            true,
            format!(
                "none of the source role's own; other roles' transactions are hidden from it (GRANT pg_read_all_stats TO {} lets this gate see them; without it a long transaction shows only when the freeze waits for it)",
                crate::engine::quote_ident(&user)
            ),
        ));
    }
    Ok(Gate::new(
        "long_transactions",
        false,
        format!(
            "transactions writing migrated tables for over {} s would stall the freeze: {}",
            input.long_transaction_seconds,
            found.join(", ")
        ),
    ))
}

/// Sessions with `session_replication_role = replica` (restore jobs, other replication tools)
/// skip ordinary triggers. pgshift makes its capture and freeze triggers fire for them where its
/// role owns the table; elsewhere such a session's writes are neither captured nor frozen. That
/// needs ownership pgshift does not have, so the gate passes, naming the tables.
async fn replica_sessions(src: &mut PgConnection, input: &GateInput<'_>) -> EngineResult<Gate> {
    let names: Vec<String> = input.tables.iter().map(|t| t.sql_name()).collect();
    let exposed: Vec<String> = sqlx::query_scalar(
        "WITH migrated AS (SELECT unnest($1::text[])::regclass AS rel),
              rels AS (SELECT rel AS relid FROM migrated
                       UNION SELECT p.relid FROM migrated m, pg_partition_tree(m.rel) p)
         SELECT c.oid::regclass::text FROM pg_class c JOIN rels r ON r.relid = c.oid
          WHERE NOT pg_has_role(c.relowner, 'USAGE') ORDER BY 1",
    )
    .bind(&names)
    .fetch_all(&mut *src)
    .await
    .context(|| "reading the owners of the migrated tables".into())?;
    Ok(Gate::new(
        "replica_sessions",
        true,
        if exposed.is_empty() {
            "capture and the freeze fire for replica-role sessions too".to_string()
        } else {
            format!(
                "sessions with session_replication_role = replica would change these unseen and write through the freeze (pgshift's role does not own them; make it their owner to close this): {}",
                exposed.join(", ")
            )
        },
    ))
}

/// The target's own triggers are enabled and its foreign keys validated on the migrated tables
/// (pgshift's triggers are left out: a freeze left by an earlier cutover is lifted at finish).
async fn target_ready(dst: &mut PgConnection, tables: &[TableSpec]) -> EngineResult<Gate> {
    let names: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    let problems: Vec<String> = sqlx::query_scalar(
        "WITH migrated AS (SELECT unnest($1::text[])::regclass AS rel)
         SELECT format('trigger %I on %s is disabled', t.tgname, t.tgrelid::regclass)
           FROM pg_trigger t
          WHERE t.tgrelid IN (SELECT rel FROM migrated) AND NOT t.tgisinternal
            AND t.tgenabled = 'D' AND t.tgname NOT LIKE 'pgshift\\_%'
         UNION ALL
         SELECT format('foreign key %I on %s is not validated', c.conname, c.conrelid::regclass)
           FROM pg_constraint c
          WHERE c.conrelid IN (SELECT rel FROM migrated) AND c.contype = 'f' AND NOT c.convalidated
          ORDER BY 1",
    )
    .bind(&names)
    .fetch_all(&mut *dst)
    .await
    .context(|| "checking triggers and foreign keys on the target".into())?;
    Ok(if problems.is_empty() {
        Gate::new(
            "target_ready",
            true,
            "triggers enabled, foreign keys validated",
        )
    } else {
        Gate::new("target_ready", false, problems.join("; "))
    })
}

/// Schema "create": every object of the migrated tables' schema is built on the target (none
/// still waiting, none failed), or the application would meet a target without them.
fn target_schema(status: &MigrationStatus) -> Gate {
    let mut pending: Vec<&str> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for t in &status.tables {
        for p in &t.objects_pending {
            if !pending.contains(&p.as_str()) {
                pending.push(p);
            }
        }
        for f in &t.objects_failed {
            let words = format!("{} ({})", f.object, f.error);
            if !failed.contains(&words) {
                failed.push(words);
            }
        }
    }
    if pending.is_empty() && failed.is_empty() {
        return Gate::new(
            "target_schema",
            true,
            "every object of the tables' schema is on the target",
        );
    }
    let mut reasons = Vec::new();
    if !failed.is_empty() {
        reasons.push(format!(
            "could not be built on the target: {}; fix the cause, then pause and resume the migration to try again",
            failed.join("; ")
        ));
    }
    if !pending.is_empty() {
        reasons.push(format!(
            "still to build on the target: {}",
            pending.join(", ")
        ));
    }
    Gate::new("target_schema", false, reasons.join("; "))
}

/// Foreign keys on the target with one end outside the migration: nothing checks them while rows
/// are applied, so they can be violated while marked valid. The gate names each one and fails
/// when a row violates it now.
async fn foreign_keys(dst: &mut PgConnection, input: &GateInput<'_>) -> EngineResult<Gate> {
    let keys = foreign_keys::crossing(dst, input.tables).await?;
    if keys.is_empty() {
        return Ok(Gate::new(
            "foreign_keys",
            true,
            "no foreign key on the target crosses the migration's edge",
        ));
    }
    let named: Vec<String> = keys.iter().map(|k| k.words()).collect();
    if !input.foreign_key_rows {
        return Ok(Gate::new(
            "foreign_keys",
            true,
            format!(
                "not checked while rows are applied, so it can be violated while marked valid (rows are checked when the cutover starts): {}",
                named.join("; ")
            ),
        ));
    }
    let mut violated = Vec::new();
    for k in &keys {
        let rows = k.violations(dst).await?;
        if rows > 0 {
            violated.push(format!(
                "{}: {rows} row{} violate{} it",
                k.words(),
                if rows == 1 { "" } else { "s" },
                if rows == 1 { "s" } else { "" }
            ));
        }
    }
    Ok(if violated.is_empty() {
        Gate::new(
            "foreign_keys",
            true,
            format!(
                "not checked while rows are applied, and no row violates it now: {}",
                named.join("; ")
            ),
        )
    } else {
        Gate::new(
            "foreign_keys",
            false,
            format!(
                "violated on the target although marked valid (rows are applied without checking it): {}; add the missing rows on the target or fix the ones that point at nothing, then cut over",
                violated.join("; ")
            ),
        )
    })
}

/// For `reverse: true`: the target role can install capture, the source role can apply.
async fn reverse_ready(
    src: &mut PgConnection,
    dst: &mut PgConnection,
    tables: &[TableSpec],
) -> EngineResult<Gate> {
    let mut problems = Vec::new();
    if let Err(e) = catalog::check_source(dst, tables).await {
        problems.push(format!(
            "on the target (the reverse migration's source): {e}"
        ));
    }
    // The old server becomes the way back's target: the source role writes there, and sets
    // the sequences when the application moves back.
    let user = current_user(src).await?;
    let mut missing = catalog::missing_table_privileges(
        src,
        tables,
        &["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"],
        &user,
    )
    .await?;
    missing.extend(sequences::missing_privileges(src, tables, &["SELECT", "UPDATE"], &user).await?);
    if !catalog::can_silence_triggers(src).await? {
        missing.push(catalog::replication_role_missing(&user));
    }
    if !missing.is_empty() {
        problems.push(format!(
            "on the source (the reverse migration's target): the source role {user:?} lacks: {}",
            missing.join(", ")
        ));
    }
    Ok(if problems.is_empty() {
        Gate::new(
            "reverse_ready",
            true,
            "both roles can run the reverse migration",
        )
    } else {
        Gate::new("reverse_ready", false, problems.join("; "))
    })
}
