//! Dashboard layer: a cutover's steps as the panel shows them: each step's name in words, its
//! outcome, timing and a one-line detail read from what the operation recorded.

use serde_json::Value;

use crate::store::{Operation, OperationState, StepOutcome};

/// One step of a cutover.
pub struct StepRow {
    pub name: String,
    pub words: &'static str,
    pub outcome: &'static str,
    pub started: String,
    pub took: String,
    pub detail: String,
}

/// A cutover operation as the panel shows it.
pub struct OperationView {
    pub state: &'static str,
    pub state_words: &'static str,
    pub running: bool,
    pub requested_by: String,
    pub started: String,
    pub steps: Vec<StepRow>,
    pub error: Option<String>,
    /// How long writes were blocked (a finished cutover).
    pub blocked: Option<String>,
    pub reverse_migration: Option<String>,
}

fn step_words(name: &str) -> &'static str {
    match name {
        "preflight" => "Preflight gates",
        "arm_reverse" => "Arm reverse replication",
        "freeze" => "Freeze source writes",
        "drain" => "Drain the last changes",
        "sequences" => "Move sequences",
        "verify_ranges" => "Compare every row, range by range",
        "verify" => "Verify what changed since",
        "finish" => "Finish",
        "restore" => "Restore source writes",
        _ => "Step",
    }
}

fn outcome_str(o: StepOutcome) -> &'static str {
    match o {
        StepOutcome::Running => "running",
        StepOutcome::Succeeded => "succeeded",
        StepOutcome::Failed => "failed",
        StepOutcome::Skipped => "skipped",
    }
}

fn op_words(s: OperationState) -> &'static str {
    match s {
        OperationState::Running => "Cutting over",
        OperationState::Succeeded => "Cut over",
        OperationState::Failed => "Cutover failed",
        OperationState::Aborted => "Cutover aborted",
    }
}

fn secs(v: &Value) -> Option<String> {
    v.as_f64().map(|s| format!("{s:.2} s"))
}

/// A step's detail in a line: what it found or did.
fn step_detail(name: &str, d: &Value) -> String {
    if let Some(e) = d["error"].as_str() {
        return e.to_string();
    }
    match name {
        "preflight" => {
            let gates = d["gates"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let failed: Vec<&str> = gates
                .iter()
                .filter(|g| g["passed"] == false)
                .filter_map(|g| g["name"].as_str())
                .collect();
            if failed.is_empty() {
                format!("{} gates passed", gates.len())
            } else {
                format!("failed: {}", failed.join(", "))
            }
        }
        "arm_reverse" => format!(
            "reverse migration {}",
            d["reverse_migration"].as_str().unwrap_or("")
        ),
        "freeze" => format!(
            "{} tables locked in {}",
            d["tables"],
            secs(&d["seconds"]).unwrap_or_default()
        ),
        "drain" => format!(
            "final tick {} applied after {}",
            d["final_tick"],
            secs(&d["seconds"]).unwrap_or_default()
        ),
        "sequences" => format!(
            "{} sequences moved",
            d["moved"].as_array().map_or(0, Vec::len)
        ),
        "verify_ranges" => {
            let tables = d["tables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let ranges: u64 = tables.iter().filter_map(|t| t["ranges"].as_u64()).sum();
            format!("{} tables match in {ranges} key ranges", tables.len())
        }
        "verify" => {
            let tables = d["tables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let differ: Vec<&str> = tables
                .iter()
                .filter(|t| t["matches"] == false)
                .filter_map(|t| t["table"].as_str())
                .collect();
            if !differ.is_empty() {
                format!("differ: {}", differ.join(", "))
            } else if d["checksums"] == false {
                format!("{} tables match (row counts only)", tables.len())
            } else {
                let rows: u64 = tables
                    .iter()
                    .filter_map(|t| t["rows_rechecked"].as_u64())
                    .sum();
                format!(
                    "{} tables match ({rows} rows written since the range pass compared)",
                    tables.len()
                )
            }
        }
        "finish" => secs(&d["writes_blocked_seconds"])
            .map(|s| format!("writes were blocked for {s}"))
            .unwrap_or_default(),
        "restore" => "the source takes writes again".into(),
        _ => String::new(),
    }
}

pub fn operation_view(op: &Operation) -> OperationView {
    let steps = op
        .steps
        .iter()
        .map(|s| StepRow {
            name: s.name.clone(),
            words: step_words(&s.name),
            outcome: outcome_str(s.outcome),
            started: s.started_at.format("%H:%M:%S%.3f").to_string(),
            took: s.finished_at.map_or_else(
                || "…".into(),
                |f| {
                    format!(
                        "{:.2} s",
                        (f - s.started_at).num_milliseconds() as f64 / 1000.0
                    )
                },
            ),
            detail: step_detail(&s.name, &s.detail),
        })
        .collect();
    let result = op.result.as_ref();
    OperationView {
        state: op.state.as_str(),
        state_words: op_words(op.state),
        running: op.state == OperationState::Running,
        requested_by: op.requested_by.clone(),
        started: op.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        steps,
        error: op.error.clone(),
        blocked: result.and_then(|r| secs(&r["writes_blocked_seconds"])),
        reverse_migration: result
            .and_then(|r| r["reverse_migration"].as_str())
            .map(String::from),
    }
}

#[cfg(test)]
mod tests {
    use super::super::view;
    use super::*;
    use serde_json::json;

    #[test]
    fn step_details_read_well() {
        assert_eq!(
            step_detail(
                "preflight",
                &json!({"gates": [{"name": "lag", "passed": false}, {"name": "x", "passed": true}]})
            ),
            "failed: lag"
        );
        assert_eq!(
            step_detail("finish", &json!({"writes_blocked_seconds": 0.4567})),
            "writes were blocked for 0.46 s"
        );
        assert_eq!(
            step_detail("drain", &json!({"error": "timed out"})),
            "timed out"
        );
        assert_eq!(
            step_detail(
                "verify",
                &json!({"checksums": true, "tables": [{"table": "public.a", "matches": true, "rows_rechecked": 3}]})
            ),
            "1 tables match (3 rows written since the range pass compared)"
        );
        assert_eq!(view::state_words("cut_over"), "Cut over");
    }
}
