//! Store layer: operations: long-running actions on a migration (a cutover, a verification) that
//! callers start, then poll. Each is persisted with its steps as they happen, so a crash leaves a
//! record that the next start can finish.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Running,
    Succeeded,
    Failed,
    /// Stopped on request (or by a shutdown) and rolled back.
    Aborted,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Running => "running",
            OperationState::Succeeded => "succeeded",
            OperationState::Failed => "failed",
            OperationState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(OperationState::Running),
            "succeeded" => Some(OperationState::Succeeded),
            "failed" => Some(OperationState::Failed),
            "aborted" => Some(OperationState::Aborted),
            _ => None,
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Running,
    Succeeded,
    Failed,
    Skipped,
}

/// One step of an operation: for a cutover `preflight`, `verify_ranges`, `arm_reverse`,
/// `freeze`, `drain`, `sequences`, `verify`, `finish` (and `restore` after a failure); for a
/// verification `verify`, `repair`, `reverify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OperationStep {
    pub name: String,
    pub outcome: StepOutcome,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// What the step found or did (gates with their reasons, tables verified, ...).
    pub detail: Value,
}

/// An operation as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    pub id: Uuid,
    pub migration_id: Uuid,
    pub migration_name: String,
    /// `cutover` or `verify`.
    pub kind: String,
    pub state: OperationState,
    pub requested_by: String,
    /// The request's options as given (never secrets).
    pub request: Value,
    pub steps: Vec<OperationStep>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}
