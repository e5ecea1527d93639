//! Engine layer (cutover): what the service asks of a migration's cutover outside a running one,
//! each on connections of its own: the preflight gates alone (the dashboard's checklist),
//! sequence drift, lifting a freeze a stopped cutover or a crash left, recognising a finished
//! cutover's permanent freeze, and starting or removing the way back after a crash.

use sqlx::PgConnection;

use super::{freeze, gates, reverse, sequences};
use crate::engine::{pg, EngineError, EngineResult, Supervisor};
use crate::store::{DesiredState, MigrationRecord};

/// Connections to the migration's source and target.
pub(super) async fn connect_both(
    supervisor: &Supervisor,
    record: &MigrationRecord,
) -> EngineResult<(PgConnection, PgConnection)> {
    let (source, target) = supervisor.endpoints(record).await?;
    let src = pg::connect("the source", &source).await?;
    let dst = pg::connect("the target", &target).await?;
    Ok((src, dst))
}

/// The preflight gates alone, as a cutover's first step checks them, without an operation (the
/// dashboard's checklist). `foreign_key_rows` counts violating rows (a scan) as the cutover does.
pub async fn preflight(
    supervisor: &Supervisor,
    record: &MigrationRecord,
    max_lag_seconds: f64,
    reverse: bool,
    foreign_key_rows: bool,
) -> EngineResult<Vec<gates::Gate>> {
    let (mut src, mut dst) = connect_both(supervisor, record).await?;
    let status = supervisor.status(record.id);
    gates::check(
        &mut src,
        &mut dst,
        &gates::GateInput {
            tables: &record.tables,
            status: status.as_ref(),
            max_lag_seconds,
            long_transaction_seconds: max_lag_seconds.max(1.0),
            reverse,
            foreign_key_rows,
        },
    )
    .await
}

/// Sequence drift (source value vs target value) of the migration's tables.
pub async fn sequence_drift(
    supervisor: &Supervisor,
    record: &MigrationRecord,
) -> EngineResult<Vec<sequences::SequenceDrift>> {
    let (mut src, mut dst) = connect_both(supervisor, record).await?;
    sequences::drift(&mut src, &mut dst, &record.tables).await
}

/// Lifts the source's freeze (after a crash during a cutover); whether one was in place.
pub async fn lift_freeze(supervisor: &Supervisor, record: &MigrationRecord) -> EngineResult<bool> {
    let (source, _) = supervisor.endpoints(record).await?;
    let mut src = pg::connect("the source", &source).await?;
    freeze::unfreeze(&mut src, &record.schema_name()).await
}

/// Lifts a freeze no cutover holds (one a stopped cutover or a crash left): `Some(lifted)`, or
/// `None` while a cutover of the migration runs (in any pgshift process).
pub async fn lift_left_freeze(
    supervisor: &Supervisor,
    record: &MigrationRecord,
) -> EngineResult<Option<bool>> {
    let (source, _) = supervisor.endpoints(record).await?;
    let mut src = pg::connect("the source", &source).await?;
    let lifted = freeze::lift_left(&mut src, &record.schema_name()).await?;
    if lifted.is_some() {
        supervisor.left_freezes().clear(record.id);
    }
    Ok(lifted)
}

/// Starts an armed reverse migration once its cutover has finished.
pub async fn start_reverse(supervisor: &Supervisor, reverse: &MigrationRecord) {
    let started = async {
        supervisor
            .store()
            .set_desired_state(reverse.id, DesiredState::Running)
            .await?;
        let mut running = reverse.clone();
        running.desired_state = DesiredState::Running;
        supervisor.start(&running).await
    };
    if let Err(e) = started.await {
        tracing::error!(migration = %reverse.name, error = %e, "cannot start the reverse migration");
    }
}

/// Removes a reverse migration armed by a cutover that never finished (a crash): what it
/// installed on both servers, then its record. Never empties a table.
pub async fn disarm_reverse(
    supervisor: &Supervisor,
    reverse: &MigrationRecord,
) -> EngineResult<()> {
    let (mut src, mut dst) = connect_both(supervisor, reverse).await?;
    reverse::disarm(&mut src, &mut dst, reverse).await?;
    supervisor
        .store()
        .delete_migration(reverse.id)
        .await
        .map_err(EngineError::from)
}

/// What the source says about a cutover whose operation is still marked running at a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftCutover {
    /// A cutover holds the migration's cutover lock: another pgshift process on the same store
    /// runs it, and finishes it (or restores the source) itself.
    RunningElsewhere,
    /// The freeze is the finished cutover's permanent one: the decision, which a crash may have
    /// kept from being recorded.
    Decided,
    /// Neither: the cutover died before its decision.
    Undecided,
}

/// Looks at the source for what became of a cutover a crash may have interrupted. The lock is
/// looked at first: a cutover that is finishing in another process has made its freeze
/// permanent already, and recording it here would wait on that process's own bookkeeping.
pub async fn left_cutover(
    supervisor: &Supervisor,
    record: &MigrationRecord,
) -> EngineResult<LeftCutover> {
    let (source, _) = supervisor.endpoints(record).await?;
    let mut src = pg::connect("the source", &source).await?;
    let schema = record.schema_name();
    if freeze::cutover_running(&mut src, &schema).await? {
        return Ok(LeftCutover::RunningElsewhere);
    }
    Ok(if freeze::is_permanent(&mut src, &schema).await? {
        LeftCutover::Decided
    } else {
        LeftCutover::Undecided
    })
}
