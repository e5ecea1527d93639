//! docs/benchmarks.md: the machine, the setup, then one table per scenario with a row per tool.
//! Rows are added as runs finish, so an interrupted run still writes what it measured.

use std::fmt::Write as _;
use std::path::Path;

use crate::common::{Ctx, R};

/// One scenario's table.
pub struct Table {
    pub heading: String,
    pub intro: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Paragraphs after the table.
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(heading: &str, intro: String, header: &[&str]) -> Table {
        Table {
            heading: heading.into(),
            intro,
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A row for a tool whose run failed: the error in the second column.
    pub fn failed(&mut self, label: &str, error: &str) {
        let mut row = vec![
            label.to_string(),
            format!("**failed**: {}", one_line(error)),
        ];
        row.resize(self.header.len(), "–".into());
        self.rows.push(row);
    }
}

fn one_line(s: &str) -> String {
    let s = s.replace('\n', " ").replace('|', "\\|");
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

/// Which way a figure is better, to mark the best tool in the summary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// One number of one tool, for the summary table at the top.
pub struct Figure {
    pub name: String,
    pub better: Better,
    pub tool: &'static str,
    pub value: f64,
    pub shown: String,
}

#[derive(Default)]
pub struct Report {
    pub command: String,
    pub date: String,
    /// Quoted at the top.
    pub notes: Vec<String>,
    pub machine: Vec<(String, String)>,
    pub setup: Vec<String>,
    pub tables: Vec<Table>,
    /// Tool runs whose target ended different from the source, with the differences.
    pub mismatches: Vec<String>,
    pub failures: Vec<String>,
    pub aborted: Option<String>,
    /// pgbench's tps with no tool, at `wal_level = replica` and `logical`.
    pub baseline_tps: [Option<f64>; 2],
    /// How long `pg_dump -Fc | pg_restore` took, for the copy table's ratios.
    pub copy_baseline: Option<std::time::Duration>,
    /// The headline figures, in the order measured.
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn table(&mut self, heading: &str) -> &mut Table {
        let i = self
            .tables
            .iter()
            .position(|t| t.heading == heading)
            .expect("scenario table declared before its rows");
        &mut self.tables[i]
    }

    /// Records a headline figure of `tool` (a label) for the summary.
    pub fn figure(
        &mut self,
        name: &str,
        better: Better,
        tool: &'static str,
        value: f64,
        shown: String,
    ) {
        self.figures.push(Figure {
            name: name.into(),
            better,
            tool,
            value,
            shown,
        });
    }

    /// Figure by figure, a column per tool, the best one in bold.
    fn summary(&self) -> String {
        let mut tools: Vec<&str> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !tools.contains(&f.tool) {
                tools.push(f.tool);
            }
            if !names.contains(&f.name.as_str()) {
                names.push(&f.name);
            }
        }
        let mut s = format!(
            "| Figure | {} |\n|---|{}\n",
            tools.join(" | "),
            "---|".repeat(tools.len())
        );
        for name in names {
            let of = |tool: &str| {
                self.figures
                    .iter()
                    .find(|f| f.name == name && f.tool == tool)
            };
            let all: Vec<&Figure> = self.figures.iter().filter(|f| f.name == name).collect();
            let best = all.iter().map(|f| f.value).fold(None, |b: Option<f64>, v| {
                Some(match (b, all[0].better) {
                    (None, _) => v,
                    (Some(b), Better::Lower) => b.min(v),
                    (Some(b), Better::Higher) => b.max(v),
                })
            });
            let cells: Vec<String> = tools
                .iter()
                .map(|t| match of(t) {
                    Some(f) if all.len() > 1 && Some(f.value) == best => format!("**{}**", f.shown),
                    Some(f) => f.shown.clone(),
                    None => "–".into(),
                })
                .collect();
            let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
        }
        s
    }

    pub fn failed(&self) -> bool {
        self.aborted.is_some() || !self.mismatches.is_empty() || !self.failures.is_empty()
    }

    pub fn render(&self) -> String {
        let mut s =
            String::from("# pgshift, Londiste3 and native logical replication, side by side\n\n");
        for n in &self.notes {
            let _ = writeln!(s, "> {n}\n");
        }
        if let Some(a) = &self.aborted {
            let _ = writeln!(s, "> **The run stopped early**: {}\n", one_line(a));
        }
        let _ = writeln!(
            s,
            "Generated by `tests/bench/compare.rs` (`bench-compare`), on {}, with:\n\n```sh\n{}\n```\n",
            self.date, self.command
        );
        s.push_str("## Machine\n\n| | |\n|---|---|\n");
        for (k, v) in &self.machine {
            let _ = writeln!(s, "| {k} | {} |", one_line(v));
        }
        s.push_str("\n## Setup\n\n");
        for l in &self.setup {
            let _ = writeln!(s, "- {l}");
        }
        s.push('\n');
        if !self.figures.is_empty() {
            let _ = writeln!(
                s,
                "## Summary\n\nThe headline figures of the sections below (best in bold; a tool that failed a \
                 scenario has no figure for it, and a tool whose target differed from the source is listed \
                 under *Failures and differences*).\n\n{}",
                self.summary()
            );
        }
        for t in &self.tables {
            let _ = writeln!(s, "## {}\n\n{}\n", t.heading, t.intro);
            if t.rows.is_empty() {
                s.push_str("(no run)\n\n");
            } else {
                let _ = writeln!(s, "| {} |", t.header.join(" | "));
                let _ = writeln!(s, "|{}", "---|".repeat(t.header.len()));
                for r in &t.rows {
                    let _ = writeln!(s, "| {} |", r.join(" | "));
                }
                s.push('\n');
            }
            for n in &t.notes {
                let _ = writeln!(s, "{n}\n");
            }
        }
        if !self.failures.is_empty() || !self.mismatches.is_empty() {
            s.push_str("## Failures and differences\n\n");
            for f in &self.failures {
                let _ = writeln!(s, "- {}", one_line(f));
            }
            for m in &self.mismatches {
                let _ = writeln!(s, "\n```text\n{m}\n```");
            }
            s.push('\n');
        }
        s
    }

    pub fn write(&self, path: &Path) -> R<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, self.render()).ctx(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_marks_the_best_tool_each_way() {
        let mut r = Report::default();
        r.figure("lag", Better::Lower, "a", 10.0, "10".into());
        r.figure("lag", Better::Lower, "b", 5.0, "5".into());
        r.figure("tps", Better::Higher, "a", 0.9, "90%".into());
        r.figure("tps", Better::Higher, "b", 0.8, "80%".into());
        r.figure("only a", Better::Lower, "a", 1.0, "1".into());
        let s = r.summary();
        assert!(s.contains("| lag | 10 | **5** |"), "{s}");
        assert!(s.contains("| tps | **90%** | 80% |"), "{s}");
        assert!(s.contains("| only a | 1 | – |"), "{s}");
    }

    #[test]
    fn a_failed_row_fills_every_column() {
        let mut t = Table::new("x", String::new(), &["Tool", "a", "b", "c"]);
        t.failed("tool", "line one\nline | two");
        assert_eq!(
            t.rows[0],
            ["tool", "**failed**: line one line \\| two", "–", "–"]
        );
    }
}
