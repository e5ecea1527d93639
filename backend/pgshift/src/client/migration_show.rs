//! Command-line layer (the API client): what `pgshift migration show` prints for people: the
//! migration's figures, a row per table, the objects of the target's schema still to build or
//! that failed (with the statement and the error), the differences between the two sides'
//! tables, and what is not moved as rows of the tables; and what `pgshift migration preview`
//! prints.

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
    out.push_str(&special_objects(&m["special_objects"]));
    out
}

/// The special objects (large objects, materialized views, unlogged and foreign tables, …)
/// with what happens to each and the command to run by hand; empty when there are none.
pub(super) fn special_objects(list_value: &Value) -> String {
    let objects = list(list_value);
    if objects.is_empty() {
        return String::new();
    }
    let mut out =
        String::from("\nnot moved as rows of the migrated tables, or moved with a caveat:\n");
    for o in objects {
        // `3 large objects` says what it is; other names need their kind.
        let kind = match o["kind"].as_str() {
            Some("large_objects") => String::new(),
            _ => text(o, "kind").replace('_', " ") + " ",
        };
        out.push_str(&format!(
            "  {kind}{}: {}\n    {}\n",
            text(o, "name"),
            handling_words(o["handling"].as_str().unwrap_or_default()),
            text(o, "words")
        ));
        if let Some(command) = o["command"].as_str() {
            out.push_str(&format!("    run: {command}\n"));
        }
    }
    out
}

/// A special object's `handling` for people.
fn handling_words(handling: &str) -> String {
    match handling {
        "refreshed" => "refreshed on the target".into(),
        other => other.replace('_', " "),
    }
}

/// What `pgshift migration preview` prints: the schema mode, a row per table with its check,
/// the patterns that match nothing, and the special objects.
pub(super) fn preview(p: &Value) -> String {
    let mut out = format!("schema: {}\n", text(p, "schema"));
    let tables = list(&p["tables"]);
    let refused = tables.iter().filter(|t| !t["problem"].is_null()).count();
    out.push_str(&format!(
        "{} table{} match, {} left out; {}\n",
        tables.len(),
        if tables.len() == 1 { "" } else { "s" },
        text(p, "not_selected"),
        if refused == 0 {
            "all can be migrated".to_string()
        } else {
            format!("{refused} will be refused")
        }
    ));
    if p["truncated"] == true {
        out.push_str("only the first tables were checked\n");
    }
    for pattern in list(&p["unmatched_patterns"]) {
        out.push_str(&format!(
            "pattern {} matches no table; creating will be refused\n",
            pattern.as_str().unwrap_or_default()
        ));
    }
    let rows: Vec<Vec<String>> = tables
        .iter()
        .map(|t| {
            let check = match t["problem"].as_str() {
                Some(why) => format!("refused: {why}"),
                None => "ok".into(),
            };
            vec![text(t, "name"), check]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table::render(&["TABLE", "CHECK"], &rows));
    }
    let notes: Vec<String> = tables
        .iter()
        .flat_map(|t| {
            list(&t["notes"]).iter().map(move |n| {
                format!(
                    "  {}: {}\n",
                    text(t, "name"),
                    n.as_str().unwrap_or_default()
                )
            })
        })
        .collect();
    if !notes.is_empty() {
        out.push_str("\nnotes:\n");
        out.extend(notes);
    }
    out.push_str(&special_objects(&p["special_objects"]));
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
