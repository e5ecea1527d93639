//! Engine layer (target schema): the plan: the source's schema dump cut down to what the
//! migrated tables need, as statements in pg_dump's order: those built before the copy, and
//! those built after it (each waiting for the tables it names to be copied, or synced).

use std::collections::HashMap;

use super::attach::{attached, attachments, Wanted};
use super::dump::SchemaDump;
use super::select::{Phase, Selection};
use super::toc::{self, Entry, Key};
use crate::engine::{quote_ident, EngineResult};

/// What an object built after the copy waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Every table it names is copied (catching up or synced).
    Copied,
    /// Every table it names is synced.
    Synced,
}

impl Wait {
    pub fn as_str(self) -> &'static str {
        match self {
            Wait::Copied => "copied",
            Wait::Synced => "synced",
        }
    }
}

/// One object to build: its statements and when.
#[derive(Debug, Clone)]
pub struct Item {
    /// pg_dump's kind: `INDEX`, `FK CONSTRAINT`, `ACL`, … (`VALIDATE` for a foreign key's
    /// validation).
    pub kind: String,
    /// How people read it: `INDEX shop.orders_customer_idx`.
    pub name: String,
    /// The table numbers it waits for (none: right after the tables exist).
    pub tables: Vec<i32>,
    pub wait: Wait,
    pub statement: String,
}

/// The migrated tables' part of the source's schema.
#[derive(Debug, Default)]
pub struct Plan {
    /// Session settings pg_restore starts its SQL with (`search_path` empty: every name in the
    /// statements is qualified).
    pub preamble: Vec<String>,
    pub before: Vec<Item>,
    pub after: Vec<Item>,
}

/// Cuts the dump down to the selection.
pub async fn plan(dump: &SchemaDump, selection: &Selection) -> EngineResult<Plan> {
    let entries = toc::parse_list(&dump.list().await?);
    let mut chosen: Vec<(Entry, Phase)> = Vec::new();
    // Each attachment's phase, and a privilege's (never before the copy: after the copy of the
    // table it is on, or right after the tables exist for other objects).
    let mut exact: HashMap<Key, (Phase, Phase)> = HashMap::new();
    let mut prefixes: Vec<(Wanted, (Phase, Phase))> = Vec::new();
    for e in &entries {
        if e.catalog == 0 && e.kind != "ROW SECURITY" {
            continue;
        }
        let Some(phase) = selection.phase_of(e) else {
            continue;
        };
        let grants = match &phase {
            Phase::Before => Phase::AfterCopy(selection.table_of(e).into_iter().collect()),
            Phase::ForeignKey { tables, .. } => Phase::AfterCopy(tables.clone()),
            other => other.clone(),
        };
        let phases = (phase.clone(), grants);
        for wanted in attachments(e) {
            if wanted.3 {
                prefixes.push((wanted, phases.clone()));
            } else {
                exact
                    .entry((wanted.0, wanted.1, wanted.2))
                    .or_insert_with(|| phases.clone());
            }
        }
        chosen.push((e.clone(), phase));
    }
    // Comments, privileges and attachments follow their object; privileges never come before
    // the copy (a role missing on the target fails one grant, not the whole build).
    for e in &entries {
        if e.catalog != 0 || e.kind == "ROW SECURITY" {
            continue;
        }
        let phase = exact.get(&e.key()).cloned().or_else(|| {
            prefixes
                .iter()
                .find(|(w, _)| attached(e, w))
                .map(|(_, p)| p.clone())
        });
        let Some((phase, grants)) = phase else {
            continue;
        };
        let phase = match (e.kind.as_str(), phase) {
            ("ACL", _) => grants,
            (_, Phase::ForeignKey { tables, .. }) => Phase::AfterCopy(tables),
            (_, p) => p,
        };
        chosen.push((e.clone(), phase));
    }
    // Back into the archive's order, which is an order its dependencies allow.
    let position: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.line.as_str(), i))
        .collect();
    chosen.sort_by_key(|(e, _)| position.get(e.line.as_str()).copied().unwrap_or(usize::MAX));
    let list: String = chosen
        .iter()
        .map(|(e, _)| format!("{}\n", e.line))
        .collect();
    let mut script = toc::split(&dump.sql(&list, "selected.list").await?);
    let mut plan = Plan {
        preamble: std::mem::take(&mut script.preamble),
        ..Plan::default()
    };
    // pg_dump --schema-only creates materialized views `WITH NO DATA`; one that holds rows on
    // the source is refreshed on the target once every table it uses is synced, after every
    // other object (its indexes among them), so that the application finds it populated after
    // the cutover. Its rows are then computed from the target's, not copied.
    let mut refreshes = Vec::new();
    for (e, phase) in chosen {
        if let (Some(view), Phase::AfterCopy(_)) = (selection.materialized_view(&e), &phase) {
            if view.populated {
                refreshes.push(Item {
                    kind: "REFRESH".into(),
                    name: format!("REFRESH {}", e.display()),
                    tables: view.tables.clone(),
                    wait: Wait::Synced,
                    statement: format!("REFRESH MATERIALIZED VIEW {};", view.sql_name),
                });
            }
        }
        let Some(statement) = script.take(&e.key()) else {
            continue;
        };
        if statement.is_empty() {
            continue;
        }
        let item = |kind: &str, name: String, tables: Vec<i32>, wait, statement: String| Item {
            kind: kind.to_string(),
            name,
            tables,
            wait,
            statement,
        };
        match phase {
            Phase::Before => plan.before.push(item(
                &e.kind,
                e.display(),
                Vec::new(),
                Wait::Copied,
                statement,
            )),
            Phase::AfterCopy(tables) => {
                plan.after
                    .push(item(&e.kind, e.display(), tables, Wait::Copied, statement))
            }
            Phase::ForeignKey {
                tables,
                partitioned,
                validate,
            } => {
                let trimmed = statement.trim_end().trim_end_matches(';').trim_end();
                if partitioned || trimmed.ends_with("NOT VALID") {
                    // Added whole once both ends are synced (or kept NOT VALID, as on the source).
                    let wait = if partitioned {
                        Wait::Synced
                    } else {
                        Wait::Copied
                    };
                    plan.after
                        .push(item(&e.kind, e.display(), tables, wait, statement));
                } else {
                    plan.after.push(item(
                        &e.kind,
                        format!("{} (NOT VALID)", e.display()),
                        tables.clone(),
                        Wait::Copied,
                        format!("{trimmed} NOT VALID;"),
                    ));
                    plan.after.push(item(
                        "VALIDATE",
                        format!("{} (VALIDATE)", e.display()),
                        tables,
                        Wait::Synced,
                        format!("{validate};"),
                    ));
                }
            }
        }
    }
    plan.after.extend(refreshes);
    Ok(plan)
}

impl Plan {
    /// Leaves out the grants to `role`, pgshift's own role on the source: they are there for
    /// pgshift's capture, not for the application, and they name a role of the source's server
    /// (on the target it may not exist, and a missing role would fail the grant and hold the
    /// cutover). Other grants of the same object are kept.
    pub fn leave_out_grants_to(&mut self, role: &str) {
        let mut names = vec![quote_ident(role)];
        // pg_dump writes a name bare when it needs no quotes.
        let bare = role
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && role
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if bare {
            names.push(role.to_string());
        }
        let names_role = |line: &str| {
            let line = line.trim_end().trim_end_matches(';');
            let grantee = if line.starts_with("GRANT ") {
                line.rsplit_once(" TO ")
                    .map(|(_, g)| g.trim_end_matches(" WITH GRANT OPTION"))
            } else if line.starts_with("REVOKE ") {
                line.rsplit_once(" FROM ").map(|(_, g)| g)
            } else {
                None
            };
            grantee.is_some_and(|g| names.iter().any(|n| n == g))
        };
        for items in [&mut self.before, &mut self.after] {
            for item in items.iter_mut().filter(|i| i.kind == "ACL") {
                if !item.statement.lines().any(names_role) {
                    continue;
                }
                let kept: Vec<&str> = item.statement.lines().filter(|l| !names_role(l)).collect();
                let end = if item.statement.ends_with('\n') {
                    "\n"
                } else {
                    ""
                };
                item.statement = format!("{}{end}", kept.join("\n"));
            }
            items.retain(|i| i.kind != "ACL" || !i.statement.trim().is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(statement: &str) -> Item {
        Item {
            kind: "ACL".into(),
            name: "ACL ON TABLE public.item".into(),
            tables: vec![1],
            wait: Wait::Copied,
            statement: statement.into(),
        }
    }

    #[test]
    fn grants_to_pgshifts_source_role_are_left_out() {
        let mut plan = Plan {
            after: vec![
                acl("GRANT SELECT,TRIGGER ON TABLE public.item TO shift_src;\nGRANT SELECT ON TABLE public.item TO reader WITH GRANT OPTION;\n"),
                acl("GRANT SELECT(n) ON TABLE public.item TO shift_src WITH GRANT OPTION;\nREVOKE ALL ON TABLE public.item FROM shift_src;\n"),
                acl("GRANT SELECT ON TABLE public.item TO shift_src_2;\nGRANT SELECT ON TABLE public.item TO \"Shift\";\n"),
            ],
            ..Plan::default()
        };
        plan.leave_out_grants_to("shift_src");
        let left: Vec<&str> = plan.after.iter().map(|i| i.statement.as_str()).collect();
        assert_eq!(
            left,
            [
                "GRANT SELECT ON TABLE public.item TO reader WITH GRANT OPTION;\n",
                "GRANT SELECT ON TABLE public.item TO shift_src_2;\nGRANT SELECT ON TABLE public.item TO \"Shift\";\n",
            ]
        );
        plan.leave_out_grants_to("Shift");
        assert_eq!(
            plan.after[1].statement,
            "GRANT SELECT ON TABLE public.item TO shift_src_2;\n"
        );
    }
}
