//! Command-line layer (the API client): cutovers and verifications from the command line: `pgshift
//! migration cutover|verify| cutover-abort` start (or stop) an operation and follow it, printing
//! each step as it finishes; `pgshift operation show|abort` look at one by id. The exit code says
//! how the operation ended: 0 only when it succeeded (and, for a verification, found both sides
//! equal).

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::Value;

use super::api::{Api, ClientError};
use super::clusters::segment;
use super::{print, print_json, table, text, Connection};

#[derive(Subcommand, Debug)]
pub enum OperationCommand {
    /// One operation (a cutover or verification) with its steps.
    Show { id: String },
    /// Abort a running operation; source writes are restored unless the switch happened.
    Abort { id: String },
}

pub async fn run(
    connection: &Connection,
    command: OperationCommand,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let api = Api::new(&connection.url, connection.token.clone())?;
    let op = match command {
        OperationCommand::Show { id } => api.get(&path(&id)).await?,
        OperationCommand::Abort { id } => {
            api.post(&format!("{}/abort", path(&id)), serde_json::json!({}))
                .await?
        }
    };
    if connection.json {
        return print_json(out, &op);
    }
    print(out, &details(&op))
}

pub(super) fn path(id: &str) -> String {
    format!("/operations/{}", segment(id))
}

/// How to follow an operation once started.
pub struct Follow {
    pub no_wait: bool,
    pub interval: Duration,
    pub json: bool,
}

/// Prints the started operation (`--no-wait`) or polls it until it ends, printing each step as it
/// finishes; then turns its outcome into the command's result.
pub async fn follow(
    api: &Api,
    started: Value,
    how: &Follow,
    out: &mut dyn Write,
) -> Result<(), ClientError> {
    let id = text(&started, "id");
    let kind = text(&started, "kind");
    if how.no_wait {
        if how.json {
            return print_json(out, &started);
        }
        return print(
            out,
            &format!(
                "{kind} {id} started on migration {} (follow it with: pgshift operation show {id})\n",
                text(&started, "migration_name")
            ),
        );
    }
    if !how.json {
        print(
            out,
            &format!(
                "{kind} {id} started on migration {}\n",
                text(&started, "migration_name")
            ),
        )?;
    }
    let path = path(&id);
    let mut printed = 0;
    let mut op = started;
    loop {
        if !how.json {
            printed = print_finished_steps(&op, printed, out)?;
        }
        if op["state"] != "running" {
            break;
        }
        tokio::time::sleep(how.interval).await;
        op = poll(api, &path).await?;
    }
    if how.json {
        print_json(out, &op)?;
    } else {
        print(out, &summary(&op))?;
    }
    outcome(&op)
}

/// One poll; a server restarting or briefly failing is asked again for up to a minute.
async fn poll(api: &Api, path: &str) -> Result<Value, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match api.get(path).await {
            Ok(op) => return Ok(op),
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => return Err(e),
        }
    }
}

fn steps(op: &Value) -> &[Value] {
    op["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Prints the finished steps after the first `printed`; returns how many are printed now. Steps
/// finish in order, so the first still running stops the printing.
fn print_finished_steps(
    op: &Value,
    mut printed: usize,
    out: &mut dyn Write,
) -> Result<usize, ClientError> {
    for step in steps(op).iter().skip(printed) {
        if step["outcome"] == "running" {
            break;
        }
        print(out, &format!("  {}\n", step_line(step)))?;
        printed += 1;
    }
    let _ = out.flush();
    Ok(printed)
}

/// `preflight: succeeded (0.3s)`, with the reason of a failed step.
fn step_line(step: &Value) -> String {
    let mut line = format!("{}: {}", text(step, "name"), text(step, "outcome"));
    if let Some(seconds) = step_seconds(step) {
        line.push_str(&format!(" ({seconds:.1}s)"));
    }
    if step["outcome"] == "failed" {
        if let Some(reason) = step_reason(step) {
            line.push_str(&format!(": {reason}"));
        }
    }
    line
}

fn step_seconds(step: &Value) -> Option<f64> {
    let parse = |f: &str| {
        step[f]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    };
    let (start, end) = (parse("started_at")?, parse("finished_at")?);
    Some((end - start).num_milliseconds() as f64 / 1000.0)
}

/// Why a step failed: its error, or the gates that did not pass.
fn step_reason(step: &Value) -> Option<String> {
    let detail = &step["detail"];
    if let Some(e) = detail["error"].as_str() {
        return Some(e.to_string());
    }
    let failed: Vec<String> = detail["gates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|g| g["passed"] == false)
        .map(|g| format!("{}: {}", text(g, "name"), text(g, "reason")))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// The last step that failed, if any.
fn failed_step(op: &Value) -> Option<&Value> {
    steps(op).iter().rev().find(|s| s["outcome"] == "failed")
}

/// The verification's tables (after a repair: as re-verified) as a table for people.
fn verdicts(op: &Value) -> String {
    let tables = op["result"]["tables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = tables
        .iter()
        .map(|t| {
            vec![
                text(t, "table"),
                text(t, "state"),
                text(t, "source_rows"),
                text(t, "target_rows"),
                t["differing_ranges"]
                    .as_array()
                    .map_or(0, Vec::len)
                    .to_string(),
            ]
        })
        .collect();
    let mut out = table::render(
        &[
            "TABLE",
            "STATE",
            "SOURCE ROWS",
            "TARGET ROWS",
            "DIFFERING RANGES",
        ],
        &rows,
    );
    // Differences in the tables' definitions (a column on one side only), one per line.
    for t in tables {
        for d in t["differences"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            if let Some(d) = d.as_str() {
                out.push_str(&format!("{d}\n"));
            }
        }
    }
    out
}

/// The closing lines for people.
fn summary(op: &Value) -> String {
    let mut out = String::new();
    if op["kind"] == "verify" && op["result"]["tables"].is_array() {
        out.push_str(&verdicts(op));
        if let Some(repaired) = op["result"]["repaired"].as_array() {
            let rows: u64 = repaired
                .iter()
                .filter_map(|r| r["rows_written"].as_u64())
                .sum();
            out.push_str(&format!(
                "repaired {} table{} ({rows} rows written)\n",
                repaired.len(),
                if repaired.len() == 1 { "" } else { "s" }
            ));
        }
    }
    if op["state"] == "succeeded" && op["result"]["differs"] == true {
        // The stderr line says which tables; stdout only must not claim success.
        out.push_str(&format!(
            "verify {} of migration {} finished: tables differ\n",
            text(op, "id"),
            text(op, "migration_name")
        ));
    } else if op["state"] == "succeeded" {
        let what = if op["kind"] == "cutover" && op["result"]["dry_run"] == true {
            "dry run (gates only)".to_string()
        } else {
            text(op, "kind")
        };
        out.push_str(&format!(
            "{what} {} of migration {} succeeded\n",
            text(op, "id"),
            text(op, "migration_name")
        ));
    }
    out
}

/// The command's result from the operation's end: failed or aborted → the failing step and the
/// reason in one line; a verification that found differences → its own exit code.
fn outcome(op: &Value) -> Result<(), ClientError> {
    let kind = text(op, "kind");
    let id = text(op, "id");
    let name = text(op, "migration_name");
    match op["state"].as_str() {
        Some("succeeded") => {
            if kind == "verify" && op["result"]["differs"] == true {
                let differing: Vec<String> = op["result"]
                    .get("after_repair")
                    .or_else(|| op["result"].get("tables"))
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter(|t| t["state"] == "differs")
                    .map(|t| text(t, "table"))
                    .collect();
                return Err(ClientError::Differences(format!(
                    "verification {id} of migration {name} found differences in {}",
                    differing.join(", ")
                )));
            }
            Ok(())
        }
        Some(state) => {
            let at = failed_step(op)
                .map(|s| format!(" at step {}", text(s, "name")))
                .unwrap_or_default();
            let reason = op["error"]
                .as_str()
                .map(str::to_string)
                .or_else(|| failed_step(op).and_then(step_reason))
                .unwrap_or_else(|| "no reason recorded".into());
            Err(ClientError::OperationFailed(format!(
                "{kind} {id} of migration {name} {state}{at}: {reason}"
            )))
        }
        None => Err(ClientError::OperationFailed(format!(
            "{kind} {id} of migration {name} has no state"
        ))),
    }
}

/// `operation show` for people: the fields, then one line per step.
fn details(op: &Value) -> String {
    let fields = [
        ("id", text(op, "id")),
        ("kind", text(op, "kind")),
        ("migration", text(op, "migration_name")),
        ("state", text(op, "state")),
        ("requested by", text(op, "requested_by")),
        ("error", text(op, "error")),
        ("created", text(op, "created_at")),
        ("finished", text(op, "finished_at")),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in fields {
        out.push_str(&format!("{:width$} {value}\n", format!("{key}:")));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = steps(op)
        .iter()
        .map(|s| {
            vec![
                text(s, "name"),
                text(s, "outcome"),
                step_seconds(s).map_or_else(|| "-".into(), |x| format!("{x:.1}s")),
                step_reason(s).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out.push_str(&table::render(
        &["STEP", "OUTCOME", "TOOK", "REASON"],
        &rows,
    ));
    if op["kind"] == "verify" && op["result"]["tables"].is_array() {
        out.push('\n');
        out.push_str(&verdicts(op));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verification_with_differences_is_its_own_failure() {
        let op = json!({"id": "x", "kind": "verify", "migration_name": "m", "state": "succeeded",
            "result": {"differs": true, "tables": [{"table": "public.a", "state": "differs"},
                {"table": "public.b", "state": "match"}]}});
        let e = outcome(&op).unwrap_err();
        assert_eq!(e.exit().code(), 7);
        assert!(e.to_string().contains("public.a") && !e.to_string().contains("public.b"));
    }

    #[test]
    fn verdicts_list_column_differences() {
        let op = json!({"id": "x", "kind": "verify", "migration_name": "m", "state": "succeeded",
            "result": {"differs": true, "tables": [{"table": "public.t", "state": "differs",
                "source_rows": 1, "target_rows": 1, "differing_ranges": [],
                "differences": ["public.t: column w exists only on the target"]}]}});
        let text = summary(&op);
        assert!(
            text.contains("public.t: column w exists only on the target\n"),
            "{text}"
        );
    }

    #[test]
    fn failed_cutover_names_the_step_and_reason() {
        let op = json!({"id": "x", "kind": "cutover", "migration_name": "m", "state": "failed",
            "error": "preflight gate failed: lag: 9s above 1s",
            "steps": [{"name": "preflight", "outcome": "failed", "detail": {}}]});
        let e = outcome(&op).unwrap_err();
        assert_eq!(e.exit().code(), 8);
        assert_eq!(
            e.to_string(),
            "cutover x of migration m failed at step preflight: preflight gate failed: lag: 9s above 1s"
        );
    }
}
