//! Service layer: the cutover and verification on demand, run as operations. Here: the requests,
//! their validation, the operation record (which records each step the engine reports) and the
//! task the operation runs in. The steps themselves, and restoring source writes on any failure
//! or abort before the finish, are the engine's (`engine::cutover::sequence`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

mod on_demand;

/// A preflight gate's verdict, as [`preflight`] returns it.
pub use crate::engine::cutover::gates::Gate;
pub use on_demand::{start_verify, VerifyRequest};

use super::migrations::find;
use super::operations::{new_operation, Recorder};
use super::{check_name, App, ServiceError, ServiceResult};
use crate::engine::cutover::sequence::{self, CutoverPlan};
use crate::engine::cutover::sequences;
use crate::store::{DesiredState, MigrationRecord, Operation};

/// `POST /api/v1/migrations/{name}/cutover`
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CutoverRequest {
    /// Run the gates only.
    pub dry_run: Option<bool>,
    /// Lag threshold of the gate (default 5 s).
    pub max_lag_seconds: Option<f64>,
    /// Longest wait for the freeze's locks and for the drain (default 30 s); then it aborts.
    pub timeout_seconds: Option<f64>,
    /// Compare the content of every table (default): checksums over every column each side
    /// has now, in key ranges before the freeze and, inside it, of the rows written since.
    /// `false` compares row counts only.
    pub checksums: Option<bool>,
    /// Longest time the source stays frozen while the cutover runs (default 120 s, at least 5): past it the
    /// source lets writes through again by itself, even if pgshift is gone, and the cutover
    /// stops. The finish makes the freeze permanent.
    pub freeze_limit_seconds: Option<f64>,
    /// Arm replication from the new server back to the old one before writes resume.
    pub reverse: Option<bool>,
    /// Name of the reverse migration (default `<name>-reverse`).
    pub reverse_name: Option<String>,
    /// Receives each step as JSON (POST).
    pub webhook_url: Option<String>,
}

fn seconds(what: &str, value: Option<f64>, default: f64) -> ServiceResult<f64> {
    let v = value.unwrap_or(default);
    if !(v > 0.0 && v <= 3600.0) {
        return Err(ServiceError::invalid(
            "invalid_body",
            format!("{what} must be more than 0 and at most 3600"),
        ));
    }
    Ok(v)
}

async fn check_webhook(app: &App, url: &str) -> ServiceResult<()> {
    use super::operations::WebhookRefused;
    match app.operations.webhooks.check(url).await {
        Ok(()) => Ok(()),
        Err(e @ WebhookRefused::NotAllowed(_)) => {
            Err(ServiceError::invalid("webhook_not_allowed", e.to_string()))
        }
        Err(e) => Err(ServiceError::invalid("invalid_webhook_url", e.to_string())),
    }
}

pub(super) fn require_running(record: &MigrationRecord) -> ServiceResult<()> {
    match record.desired_state {
        DesiredState::Running => Ok(()),
        DesiredState::CutOver => Err(ServiceError::conflict(
            "cut_over",
            format!("migration {:?} has already been cut over", record.name),
        )),
        _ => Err(ServiceError::conflict(
            "not_running",
            format!(
                "migration {:?} is not running; start or resume it first",
                record.name
            ),
        )),
    }
}

/// Starts a cutover operation and returns it (running).
pub async fn start_cutover(
    app: &Arc<App>,
    name: &str,
    req: CutoverRequest,
    requested_by: &str,
) -> ServiceResult<Operation> {
    let record = find(app, name).await?;
    require_running(&record)?;
    let max_lag = seconds("max_lag_seconds", req.max_lag_seconds, 5.0)?;
    let timeout = seconds("timeout_seconds", req.timeout_seconds, 30.0)?;
    let freeze_limit = seconds("freeze_limit_seconds", req.freeze_limit_seconds, 120.0)?;
    // The finish needs a margin before the deadline (engine::cutover::freeze): a shorter limit
    // would freeze the source for a cutover that can never finish.
    if freeze_limit < 5.0 {
        return Err(ServiceError::invalid(
            "invalid_body",
            "freeze_limit_seconds must be at least 5",
        ));
    }
    if let Some(url) = &req.webhook_url {
        check_webhook(app, url).await?;
    }
    let reverse_name = if req.reverse.unwrap_or(false) {
        let n = req
            .reverse_name
            .clone()
            .unwrap_or_else(|| format!("{name}-reverse"));
        check_name("reverse migration", &n)?;
        if let Some(existing) = app.store.migration_by_name(&n).await? {
            let left_armed = existing.desired_state == DesiredState::Created
                && existing.source == record.target
                && existing.target == record.source;
            let why = if left_armed {
                format!("migration {n:?} is the way back armed by a cutover that did not finish, and does not run: remove it (`pgshift migration remove {n}`; nothing is emptied) or pick another reverse_name")
            } else {
                format!("migration {n:?} already exists; pick another reverse_name")
            };
            return Err(ServiceError::conflict("duplicate_name", why));
        }
        Some(n)
    } else {
        None
    };
    let shown = json!({
        "dry_run": req.dry_run.unwrap_or(false),
        "max_lag_seconds": max_lag,
        "timeout_seconds": timeout,
        "freeze_limit_seconds": freeze_limit,
        "checksums": req.checksums.unwrap_or(true),
        "reverse": reverse_name.is_some(),
        "reverse_name": reverse_name,
        "webhook_url": req.webhook_url.as_deref().map(super::operations::redact_webhook_url),
    });
    let op = new_operation(&record, "cutover", requested_by, shown);
    let cancel = app.operations.claim(record.id, op.id, "cutover")?;
    let webhook = req
        .webhook_url
        .clone()
        .map(|url| (url, app.operations.webhooks.clone()));
    let mut recorder = match Recorder::create(app.store.clone(), op, webhook).await {
        Ok(r) => r,
        Err(e) => {
            app.operations.release(record.id);
            return Err(e);
        }
    };
    let snapshot = recorder.op.clone();
    let plan = CutoverPlan {
        dry_run: req.dry_run.unwrap_or(false),
        max_lag,
        timeout: Duration::from_secs_f64(timeout),
        checksums: req.checksums.unwrap_or(true),
        reverse_name,
        freeze_limit: Duration::from_secs_f64(freeze_limit),
    };
    let task_app = app.clone();
    let id = record.id;
    app.operations.start(id, async move {
        let end = sequence::run(&task_app.supervisor, record, plan, cancel, &mut recorder).await;
        recorder
            .finish(end.state, Some(end.result), end.error)
            .await;
    });
    Ok(snapshot)
}

/// What `POST /api/v1/migrations/{name}/unfreeze` did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Unfrozen {
    /// Whether a freeze was in place and is now lifted (`false`: the source was not frozen).
    pub lifted: bool,
}

/// Lifts a freeze a stopped cutover (or a crash) left on the source of a migration that was not
/// cut over. pgshift lifts such a freeze by itself as soon as it can; this tries now. Refused
/// while an operation runs (the cutover owns its freeze) and for a cut-over migration (its
/// freeze is meant to stay: removing the migration with `unfreeze_source` lifts it).
pub async fn unfreeze(app: &App, name: &str) -> ServiceResult<Unfrozen> {
    let record = find(app, name).await?;
    if record.desired_state == DesiredState::CutOver {
        return Err(ServiceError::conflict(
            "cut_over",
            format!("migration {name:?} was cut over: its old server stays frozen on purpose (remove the migration with unfreeze_source=true to lift it)"),
        ));
    }
    let running = || {
        ServiceError::conflict(
            "operation_running",
            format!("an operation is running on migration {name:?}; it lifts its own freeze when it stops"),
        )
    };
    let _held = app
        .operations
        .hold(record.id, name, "lifting the freeze".into())?;
    match sequence::lift_left_freeze(&app.supervisor, &record).await? {
        Some(lifted) => {
            if lifted {
                tracing::warn!(migration = %name, "freeze on the source lifted on request");
            }
            Ok(Unfrozen { lifted })
        }
        None => Err(running()),
    }
}

/// Aborts the migration's running operation.
pub async fn abort(app: &App, name: &str) -> ServiceResult<Operation> {
    let record = find(app, name).await?;
    let Some(id) = app.operations.abort(record.id) else {
        return Err(ServiceError::conflict(
            "operation_not_running",
            format!("no operation is running on migration {name:?}"),
        ));
    };
    super::operations::get(app, &id.to_string()).await
}

/// Sequence drift (source value vs target value) for the migration's status; `None` when a side
/// cannot be read (the status says why elsewhere).
pub async fn sequence_drift(
    app: &App,
    record: &MigrationRecord,
) -> Option<Vec<sequences::SequenceDrift>> {
    match sequence::sequence_drift(&app.supervisor, record).await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::debug!(migration = %record.name, error = %e, "cannot read sequence drift");
            None
        }
    }
}

/// The preflight gates alone, as a dry run reports them, without recording an operation: for the
/// dashboard's checklist, which refreshes them while an operator watches (a stored dry run each
/// time would fill the migration's operation history). Holds no claim on the migration, so it
/// never stands in the way of a cutover being started.
pub async fn preflight(
    app: &App,
    name: &str,
    max_lag_seconds: Option<f64>,
    reverse: bool,
) -> ServiceResult<Vec<Gate>> {
    let record = find(app, name).await?;
    require_running(&record)?;
    let max_lag = seconds("max_lag_seconds", max_lag_seconds, 5.0)?;
    // The checklist refreshes every few seconds: it names the keys, the cutover's own preflight
    // counts the rows that violate them.
    let foreign_key_rows = false;
    Ok(sequence::preflight(&app.supervisor, &record, max_lag, reverse, foreign_key_rows).await?)
}
