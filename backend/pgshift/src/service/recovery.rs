//! Service layer: what a crash left behind, put right at server start. Every operation still
//! marked running is finished as failed, except a cutover another pgshift process on the same
//! store still runs (it holds the cutover's lock on the source). A cutover's freeze is lifted
//! (unless the migration was cut over) and the reverse migration it armed is removed, or started
//! when the cutover had finished: nothing stays frozen, and nothing replicates back, because
//! pgshift died.

use chrono::Utc;
use serde_json::Value;

use super::{App, ServiceResult};
use crate::engine::cutover::sequence::{self, LeftCutover};
use crate::store::{DesiredState, MigrationRecord, Operation, OperationState, StepOutcome};

/// Finishes every operation a crash left running. When the source cannot be reached yet, the
/// migration's run lifts the freeze once it can (and the freeze's own deadline lets writes
/// through anyway).
pub async fn recover(app: &App) -> ServiceResult<()> {
    let mut migrations = app.store.list_migrations().await?;
    for mut op in app.store.running_operations().await? {
        let mut note = String::from("pgshift stopped while this operation ran");
        let mut state = OperationState::Failed;
        if let Some(record) = migrations
            .iter_mut()
            .find(|m| m.id == op.migration_id)
            .filter(|_| op.kind == "cutover")
        {
            let left = sequence::left_cutover(&app.supervisor, record).await;
            if matches!(left, Ok(LeftCutover::RunningElsewhere)) {
                // Another pgshift process on this store runs it (its source connection holds
                // the cutover's lock): it finishes or restores it and records the outcome.
                tracing::info!(operation = %op.id, migration = %op.migration_name, "a cutover marked running is held by another pgshift process; leaving it to that process");
                continue;
            }
            if record.desired_state != DesiredState::CutOver {
                match left {
                    // The finish made the freeze permanent and died before recording it: the
                    // cutover happened (writers were told the database moved).
                    Ok(LeftCutover::Decided) => {
                        app.store
                            .set_desired_state(record.id, DesiredState::CutOver)
                            .await?;
                        record.desired_state = DesiredState::CutOver;
                        note.push_str(
                            "; the cutover had finished on the source and is recorded at restart",
                        );
                        state = OperationState::Succeeded;
                    }
                    // Undecided.
                    Ok(_) => match lift_freeze(app, record, &mut note).await {
                        Some(writable) => report_blocked(&mut op, !writable),
                        // A cutover took the lock since: not ours to finish.
                        None => continue,
                    },
                    Err(e) => {
                        note_still_frozen(app, record, &e, &mut note);
                        report_blocked(&mut op, true);
                    }
                }
            }
        }
        if op.kind == "cutover" {
            if let Some(record) = migrations.iter().find(|m| m.id == op.migration_id) {
                settle_reverse(app, &migrations, record, &op, &mut note).await;
            }
        }
        tracing::warn!(operation = %op.id, migration = %op.migration_name, "finishing an operation left running by a crash");
        finish(&mut op, state, note);
        app.store.update_operation(&op).await?;
    }
    Ok(())
}

/// Lifts the freeze unless a cutover (of another pgshift process on the same store) holds it:
/// `None` then; else whether the source is writable now.
async fn lift_freeze(app: &App, record: &MigrationRecord, note: &mut String) -> Option<bool> {
    match sequence::lift_left_freeze(&app.supervisor, record).await {
        Ok(Some(true)) => {
            note.push_str("; the source's freeze was lifted at restart");
            Some(true)
        }
        Ok(Some(false)) => Some(true),
        Ok(None) => None,
        Err(e) => {
            note_still_frozen(app, record, &e, note);
            Some(false)
        }
    }
}

/// The migration's run lifts it as soon as the source lets it, and says the source is still
/// frozen until then.
fn note_still_frozen(
    app: &App,
    record: &MigrationRecord,
    e: &crate::engine::EngineError,
    note: &mut String,
) {
    tracing::error!(migration = %record.name, error = %e, "cannot lift a freeze left by a crash yet");
    let still = format!(
        "the source is still frozen: {}; pgshift keeps trying to lift it, and the source lets writes through by itself once freeze_limit_seconds have passed",
        e.shown()
    );
    app.supervisor.left_freezes().note(record.id, &still);
    note.push_str("; ");
    note.push_str(&still);
}

/// `writes_blocked_seconds` of a cutover a crash interrupted: from its freeze's first lock
/// request until now, or until the freeze's own limit let writes through if that came first
/// (an upper bound: pgshift was not there to see the end); 0 when it never froze.
fn report_blocked(op: &mut Operation, still_frozen: bool) {
    let began = op
        .steps
        .iter()
        .find(|s| s.name == "freeze")
        .map(|s| s.started_at);
    let limit = op.request["freeze_limit_seconds"].as_f64();
    let blocked = began.map_or(0.0, |at| {
        let since = (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0;
        limit.map_or(since, |l| since.min(l))
    });
    let mut result = op.result.take().unwrap_or_else(|| serde_json::json!({}));
    result["writes_blocked_seconds"] = blocked.into();
    if still_frozen {
        result["source_still_frozen"] = true.into();
    }
    op.result = Some(result);
}

/// The reverse migration a cutover armed is stored as created until the finish starts it: after
/// a finished cutover it is started; otherwise what it installed is removed with its record (no
/// table is ever emptied), so a retried cutover can arm it again.
async fn settle_reverse(
    app: &App,
    migrations: &[MigrationRecord],
    record: &MigrationRecord,
    op: &Operation,
    note: &mut String,
) {
    let Some(name) = op.request.get("reverse_name").and_then(Value::as_str) else {
        return;
    };
    let Some(reverse) = migrations.iter().find(|m| {
        m.name == name
            && m.desired_state == DesiredState::Created
            && m.source == record.target
            && m.target == record.source
    }) else {
        return;
    };
    if record.desired_state == DesiredState::CutOver {
        sequence::start_reverse(&app.supervisor, reverse).await;
        note.push_str(&format!(
            "; the cutover had finished: its reverse migration {name:?} was started"
        ));
        return;
    }
    match sequence::disarm_reverse(&app.supervisor, reverse).await {
        Ok(()) => note.push_str(&format!(
            "; the reverse migration {name:?} it had armed was removed"
        )),
        Err(e) => {
            tracing::error!(migration = %name, error = %e, "cannot remove the reverse migration of an unfinished cutover");
            note.push_str(&format!(
                "; the reverse migration {name:?} it had armed could not be removed yet ({}); it does not run: remove it with `pgshift migration remove {name}` (nothing is emptied)",
                e.shown()
            ));
        }
    }
}

fn finish(op: &mut Operation, state: OperationState, note: String) {
    let now = Utc::now();
    for step in op
        .steps
        .iter_mut()
        .filter(|s| s.outcome == StepOutcome::Running)
    {
        step.outcome = if state == OperationState::Succeeded {
            StepOutcome::Succeeded
        } else {
            StepOutcome::Failed
        };
        step.finished_at = Some(now);
    }
    op.state = state;
    op.error = Some(note);
    op.updated_at = now;
    op.finished_at = Some(now);
}
