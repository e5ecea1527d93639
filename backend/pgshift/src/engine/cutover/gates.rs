//! Engine layer (cutover): preflight gates: everything checked before the cutover changes anything.
//! Each gate says whether it passed and why not, in words an operator can act on.

use serde::Serialize;
use sqlx::{PgConnection, Row};

use super::foreign_keys;
use super::sequences;
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
    fn new(name: &'static str, passed: bool, reason: impl Into<String>) -> Self {
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
    gates.push(target_ready(dst, input.tables).await?);
    gates.push(foreign_keys(dst, input).await?);
    gates.push(match sequences::drift(src, dst, input.tables).await {
        Ok(all) => {
            // Checked before anything changes: the step after the freeze cannot create it.
            let missing = sequences::missing(&all);
            if missing.is_empty() {
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

/// Transactions that hold a lock on a migrated table that the freeze would wait for, and began
/// longer ago than the threshold.
async fn long_transactions(src: &mut PgConnection, input: &GateInput<'_>) -> EngineResult<Gate> {
    let names: Vec<String> = input.tables.iter().map(|t| t.sql_name()).collect();
    let rows = sqlx::query(
        "SELECT DISTINCT a.pid, a.usename::text, extract(epoch FROM clock_timestamp() - a.xact_start)::float8
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.relation IN (SELECT unnest($1::text[])::regclass)
            AND l.mode NOT IN ('AccessShareLock', 'RowShareLock')
            AND a.pid <> pg_backend_pid()
            AND a.xact_start < clock_timestamp() - make_interval(secs => $2)
          ORDER BY 1",
    )
    .bind(&names)
    .bind(input.long_transaction_seconds)
    .fetch_all(&mut *src)
    .await
    .context(|| "looking for long transactions on the source".into())?;
    if rows.is_empty() {
        return Ok(Gate::new("long_transactions", true, "none"));
    }
    let found: Vec<String> = rows
        .iter()
        .map(|r| {
            let pid: i32 = r.get(0);
            let user: Option<String> = r.get(1);
            let secs: f64 = r.get(2);
            format!("pid {pid} ({}) open {secs:.0} s", user.unwrap_or_default())
        })
        .collect();
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
    let names: Vec<String> = tables.iter().map(|t| t.sql_name()).collect();
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s on %s', p, t)
           FROM unnest($1::text[]) t, unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE']) p
          WHERE NOT has_table_privilege(t, p) ORDER BY 1",
    )
    .bind(&names)
    .fetch_all(&mut *src)
    .await
    .context(|| "checking privileges on the source".into())?;
    if !missing.is_empty() {
        problems.push(format!("the source role lacks {}", missing.join(", ")));
    }
    if !catalog::can_silence_triggers(src).await? {
        problems.push("the source role may not set session_replication_role".into());
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
