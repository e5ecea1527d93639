//! The Markdown report. Phases add figures and details as they finish, so a run that stops
//! half-way still writes what it measured, and says why it stopped.

use std::fmt::Write as _;
use std::path::Path;

use crate::common::{Ctx, R};
use crate::logcap;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Miss,
    /// Measured, no target to meet.
    Info,
}

impl Status {
    pub fn of(pass: bool) -> Self {
        if pass {
            Status::Pass
        } else {
            Status::Miss
        }
    }

    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Miss => "**MISS**",
            Status::Info => "info",
        }
    }
}

pub struct Figure {
    pub name: String,
    pub result: String,
    pub target: String,
    pub status: Status,
}

#[derive(Default)]
pub struct Report {
    /// Shown at the top, one quoted paragraph each.
    pub title_notes: Vec<String>,
    /// Set when `--only` left some phase out: the ones that ran.
    pub phases_run: Option<String>,
    pub command: String,
    pub date: String,
    pub machine: Vec<(String, String)>,
    pub setup: Vec<String>,
    pub figures: Vec<Figure>,
    /// (heading, Markdown body)
    pub sections: Vec<(String, String)>,
    /// One line per data check, in order.
    pub checks: Vec<String>,
    /// Data that did not match: the run exits non-zero.
    pub mismatches: Vec<String>,
    /// Other findings worth a look (errors reported by pgshift, server log errors).
    pub problems: Vec<String>,
    pub server_logs: Vec<(String, Vec<String>)>,
    pub aborted: Option<String>,
}

impl Report {
    pub fn figure(&mut self, name: &str, result: String, target: &str, status: Status) {
        crate::say!(
            "{name}: {result} (target {target}) {}",
            status.label().trim_matches('*')
        );
        self.figures.push(Figure {
            name: name.into(),
            result,
            target: target.into(),
            status,
        });
    }

    pub fn section(&mut self, heading: &str, body: String) {
        self.sections.push((heading.into(), body));
    }

    pub fn mismatch(&mut self, what: String) {
        eprintln!("\n!!!!!!!! DATA MISMATCH !!!!!!!!\n{what}\n");
        self.mismatches.push(what);
    }

    pub fn problem(&mut self, what: String) {
        if !self.problems.contains(&what) {
            crate::say!("PROBLEM: {what}");
            self.problems.push(what);
        }
    }

    pub fn failed(&self) -> bool {
        !self.mismatches.is_empty() || self.aborted.is_some()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(w, "# pgshift engine benchmark\n");
        let _ = writeln!(
            w,
            "Written by `tests/bench/engine.rs` on {}. Reproduce with:\n\n```sh\n{}\n```\n",
            self.date, self.command
        );
        for note in &self.title_notes {
            let _ = writeln!(w, "> **Note:** {note}\n");
        }
        if let Some(reason) = &self.aborted {
            let _ = writeln!(
                w,
                "> **ABORTED:** the run stopped before the end; figures below are what it measured until then.\n>\n> ```text\n{}\n> ```\n",
                quote_lines(reason)
            );
        }
        if !self.mismatches.is_empty() {
            let _ = writeln!(
                w,
                "> **DATA MISMATCH:** the target did not match the source {} time(s); see *Data checks*.\n",
                self.mismatches.len()
            );
        }

        let _ = writeln!(w, "## Machine\n\n| | |\n|---|---|");
        for (k, v) in &self.machine {
            let _ = writeln!(w, "| {k} | {} |", cell(v));
        }

        let _ = writeln!(
            w,
            "\n## Summary\n\n| Figure | Result | Target | |\n|---|---|---|---|"
        );
        for f in &self.figures {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} |",
                cell(&f.name),
                cell(&f.result),
                cell(&f.target),
                f.status.label()
            );
        }
        let data = if self.mismatches.is_empty() {
            if self.aborted.is_some() {
                "PASS so far"
            } else {
                "PASS"
            }
        } else {
            "**MISMATCH**"
        };
        let _ = writeln!(
            w,
            "| Data checks (target equals source at the end of every phase) | {} mismatch(es) | 0 | {data} |",
            self.mismatches.len()
        );
        let pgshift_warnings = logcap::warnings_and_errors();
        let _ = writeln!(
            w,
            "| pgshift warnings and errors in its log | {} | 0 | {} |",
            pgshift_warnings.len(),
            if pgshift_warnings.is_empty() {
                "PASS"
            } else {
                "**MISS**"
            }
        );

        if !self.setup.is_empty() {
            let _ = writeln!(w, "\n## Setup\n");
            for line in &self.setup {
                let _ = writeln!(w, "- {line}");
            }
        }
        for (heading, body) in &self.sections {
            let _ = writeln!(w, "\n## {heading}\n\n{}", body.trim_end());
        }

        let _ = writeln!(w, "\n## Data checks\n");
        for c in &self.checks {
            let _ = writeln!(w, "- {c}");
        }
        if self.mismatches.is_empty() {
            let _ = writeln!(w, "\nEvery check found the target equal to the source.");
        } else {
            let _ = writeln!(w);
            for m in &self.mismatches {
                let _ = writeln!(w, "```text\n{}\n```\n", m.trim_end());
            }
        }

        let _ = writeln!(w, "\n## Problems found\n");
        if self.problems.is_empty() && pgshift_warnings.is_empty() {
            let _ = writeln!(w, "None.");
        }
        for p in &self.problems {
            let _ = writeln!(w, "- {}", p.replace('\n', " "));
        }
        if !pgshift_warnings.is_empty() {
            let _ = writeln!(w, "\npgshift's warnings and errors:\n\n```text");
            for e in pgshift_warnings.iter().take(50) {
                let _ = writeln!(w, "{:>8.1}s {} {}: {}", e.at, e.level, e.target, e.text);
            }
            if pgshift_warnings.len() > 50 {
                let _ = writeln!(w, "... and {} more", pgshift_warnings.len() - 50);
            }
            let _ = writeln!(w, "```");
        }

        let (entries, dropped) = logcap::entries();
        let _ = writeln!(
            w,
            "\n## pgshift log (INFO and above)\n\n<details><summary>{} line(s)</summary>\n\n```text",
            entries.len() + dropped
        );
        for e in &entries {
            let _ = writeln!(w, "{:>8.1}s {:5} {}: {}", e.at, e.level, e.target, e.text);
        }
        if dropped > 0 {
            let _ = writeln!(w, "... and {dropped} more");
        }
        let _ = writeln!(w, "```\n\n</details>");

        for (name, lines) in &self.server_logs {
            let _ = writeln!(
                w,
                "\n## {name} server log: {} ERROR/FATAL/PANIC line(s)\n",
                lines.len()
            );
            if !lines.is_empty() {
                let _ = writeln!(w, "```text");
                for l in lines.iter().take(40) {
                    let _ = writeln!(w, "{l}");
                }
                if lines.len() > 40 {
                    let _ = writeln!(w, "... and {} more", lines.len() - 40);
                }
                let _ = writeln!(w, "```");
            }
        }
        s
    }

    pub fn write(&self, path: &Path) -> R<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, self.render()).ctx(|| format!("writing {}", path.display()))
    }

    /// The summary, for the end of stderr.
    pub fn summary(&self) -> String {
        let mut s = String::from("\n==================== summary ====================\n");
        if let Some(phases) = &self.phases_run {
            let _ = writeln!(s, "partial run (--only): {phases}");
        }
        for f in &self.figures {
            let _ = writeln!(
                s,
                "{:<5} {:<44} {:<40} target {}",
                f.status.label().trim_matches('*'),
                f.name,
                f.result,
                f.target
            );
        }
        let _ = writeln!(s, "data mismatches: {}", self.mismatches.len());
        let _ = writeln!(
            s,
            "pgshift warnings/errors: {}",
            logcap::warnings_and_errors().len()
        );
        for p in &self.problems {
            let _ = writeln!(s, "problem: {}", p.replace('\n', " "));
        }
        if let Some(a) = &self.aborted {
            let _ = writeln!(s, "ABORTED: {a}");
        }
        s
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', "<br>")
}

fn quote_lines(text: &str) -> String {
    text.lines()
        .map(|l| format!("> {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
