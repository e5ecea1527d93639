//! Command-line layer (the API client): what `pgshift migration show` prints for people: the
//! migration's figures, a row per table, the objects of the target's schema still to build or
//! that failed (with the statement and the error), and the differences between the two sides'
//! tables.

use serde_json::Value;

use super::migrations::{lag, side, tables_synced};
use super::{table, text};

/// The migration as `pgshift migration show` prints it.
pub(super) fn details(m: &Value) -> String {
    let fields = [
        ("name", text(m, "name")),
        ("state", text(m, "state")),
        ("lag", lag(m)),
        ("pending events", text(m, "pending_events")),
        ("last tick", text(m, "last_tick")),
        ("applied tick", text(m, "applied_tick")),
        ("events applied", text(m, "events_applied")),
        ("source", side(&m["source"])),
        ("target", side(&m["target"])),
        ("schema", text(m, "schema")),
        ("tables", tables_synced(m) + " synced"),
        ("error", text(m, "error")),
        ("created", text(m, "created_at")),
        ("updated", text(m, "updated_at")),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in fields {
        out.push_str(&format!("{:width$} {value}\n", format!("{key}:")));
    }
    let rows: Vec<Vec<String>> = m["tables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|t| {
            vec![
                text(t, "name"),
                text(t, "identity"),
                text(t, "state"),
                text(t, "rows_copied"),
                text(t, "rows_estimated"),
                objects(t),
                text(t, "error"),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table::render(
        &[
            "TABLE",
            "IDENTITY",
            "STATE",
            "ROWS COPIED",
            "ROWS ESTIMATED",
            "OBJECTS",
            "ERROR",
        ],
        &rows,
    ));
    let tables = m["tables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut failed = Vec::new();
    let mut pending = Vec::new();
    for t in tables {
        for f in list(&t["objects_failed"]) {
            let failure = format!(
                "  {}: {}\n    error: {}\n    statement: {}\n",
                text(t, "name"),
                text(f, "object"),
                text(f, "error"),
                text(f, "statement").replace('\n', "\n      ")
            );
            if !failed.contains(&failure) {
                failed.push(failure);
            }
        }
        for p in list(&t["objects_pending"]) {
            pending.push(format!(
                "  {}: {}\n",
                text(t, "name"),
                p.as_str().unwrap_or_default()
            ));
        }
    }
    if !failed.is_empty() {
        out.push_str("\nobjects that could not be built on the target (tried again when the migration is resumed):\n");
        out.extend(failed);
    }
    if !pending.is_empty() {
        out.push_str("\nobjects still to build on the target:\n");
        out.extend(pending);
    }
    let differences = list(&m["differences"]);
    if !differences.is_empty() {
        out.push_str("\ndifferences between the source's and the target's tables:\n");
        for d in differences {
            let refused = if d["refused"].as_bool() == Some(true) {
                " (pgshift refuses this)"
            } else {
                ""
            };
            out.push_str(&format!("  {}{refused}\n", text(d, "words")));
        }
    }
    out
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A table's objects still to build and failed, for the table column: `3 to build, 1 failed`.
fn objects(t: &Value) -> String {
    let (pending, failed) = (
        list(&t["objects_pending"]).len(),
        list(&t["objects_failed"]).len(),
    );
    match (pending, failed) {
        (0, 0) => "-".into(),
        (p, 0) => format!("{p} to build"),
        (0, f) => format!("{f} failed"),
        (p, f) => format!("{p} to build, {f} failed"),
    }
}
