//! `bench-compare`'s command line: sizes, and which tools and scenarios run.

use std::path::PathBuf;

use crate::common::{self, R};
use crate::tools::ToolKind;

pub const USAGE: &str = "\
usage: tests/bench/run [--scale N] [--load-scale N] [--clients N] [--seconds N]
                       [--tools LIST] [--scenarios LIST] [--out PATH]

  --scale N        pgbench scale of the initial-copy database (default 50: 5,000,000 accounts)
  --load-scale N   pgbench scale of the database that the load, bulk and cutover scenarios
                   use (default 10, or --scale when smaller: 1,000,000 accounts, so the bulk
                   UPDATE touches 1,000,000 rows and the DELETE 500,000)
  --clients N      pgbench clients (default 4; threads: 2, or 1 for one client)
  --seconds N      length of each pgbench run (default 60)
  --tools LIST     comma-separated, from: pgshift, londiste, native (default: all)
  --scenarios LIST comma-separated, from (default: all):
                     load         write overhead, lag under load, drain
                     copy         initial copy into tables made beforehand, next to
                                  pg_dump | pg_restore
                     copy-create  initial copy into an empty target database (pgshift
                                  with schema \"create\"), next to pg_dump | pg_restore
                     bulk         bulk UPDATE and bulk DELETE
                     cutover      writes blocked until the target can take them
  --out PATH       the Markdown report (default docs/benchmarks.md in the workspace)

A smoke run: tests/bench/run --scale 2 --seconds 10";

/// A scenario of the comparison; they run in this order for each tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Load,
    Copy,
    CopyCreate,
    Bulk,
    Cutover,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Load,
        Scenario::Copy,
        Scenario::CopyCreate,
        Scenario::Bulk,
        Scenario::Cutover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Load => "load",
            Scenario::Copy => "copy",
            Scenario::CopyCreate => "copy-create",
            Scenario::Bulk => "bulk",
            Scenario::Cutover => "cutover",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Args {
    pub scale: u32,
    pub load_scale: u32,
    pub clients: u32,
    pub seconds: u32,
    pub tools: Vec<ToolKind>,
    pub scenarios: Vec<Scenario>,
    pub out: PathBuf,
    pub raw: Vec<String>,
}

impl Args {
    pub fn parse() -> R<Args> {
        Self::parse_from(std::env::args().skip(1).collect())
    }

    fn parse_from(raw: Vec<String>) -> R<Args> {
        let mut args = Args {
            scale: 50,
            load_scale: 0,
            clients: 4,
            seconds: 60,
            tools: ToolKind::ALL.to_vec(),
            scenarios: Scenario::ALL.to_vec(),
            out: common::workspace_root().join("docs/benchmarks.md"),
            raw: raw.clone(),
        };
        common::each_flag(&raw, USAGE, |key, value| {
            let number = |v: String| common::positive(key, v);
            match key {
                "--scale" => args.scale = number(value()?)?,
                "--load-scale" => args.load_scale = number(value()?)?,
                "--clients" => args.clients = number(value()?)?,
                "--seconds" => args.seconds = number(value()?)?,
                "--tools" => args.tools = pick(&value()?, "--tools", &ToolKind::ALL, |t| t.name())?,
                "--scenarios" => {
                    args.scenarios = pick(&value()?, "--scenarios", &Scenario::ALL, |s| s.name())?
                }
                "--out" => args.out = PathBuf::from(value()?),
                other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
            }
            Ok(())
        })?;
        if args.load_scale == 0 {
            args.load_scale = args.scale.min(10);
        }
        Ok(args)
    }

    pub fn threads(&self) -> u32 {
        self.clients.min(2)
    }

    pub fn runs(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }

    pub fn uses(&self, t: ToolKind) -> bool {
        self.tools.contains(&t)
    }

    /// Smaller than the issue's figures: the report says so at the top.
    pub fn smoke(&self) -> bool {
        self.scale < 50 || self.load_scale < 10 || self.seconds < 60 || self.clients != 4
    }

    /// The command that produced the report: `tests/bench/run …` when started by that script.
    pub fn command_line(&self) -> String {
        if let Ok(c) = std::env::var("PGSHIFT_BENCH_COMMAND") {
            return c;
        }
        let mut s = String::from("cargo run --release -p pgshift-tests --bin bench-compare --");
        for a in &self.raw {
            s.push(' ');
            s.push_str(&common::shell_quote(a));
        }
        s
    }
}

/// A comma-separated list of names from `all`, returned in `all`'s order.
fn pick<T: Copy + PartialEq>(
    list: &str,
    flag: &str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> R<Vec<T>> {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    for n in &names {
        if !all.iter().any(|t| name(*t) == *n) {
            let valid: Vec<&str> = all.iter().map(|t| name(*t)).collect();
            return Err(format!(
                "{flag}: unknown name {n:?} (one of {})\n\n{USAGE}",
                valid.join(", ")
            ));
        }
    }
    Ok(all
        .iter()
        .copied()
        .filter(|t| names.contains(&name(*t)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> R<Args> {
        Args::parse_from(args.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn defaults_are_the_issues_figures() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            (a.scale, a.load_scale, a.clients, a.seconds),
            (50, 10, 4, 60)
        );
        assert_eq!(a.tools, ToolKind::ALL);
        assert_eq!(a.scenarios, Scenario::ALL);
        assert!(!a.smoke());
    }

    #[test]
    fn smoke_sizes_and_selection() {
        let a = parse(&["--scale", "2", "--seconds=10", "--tools", "native,pgshift"]).unwrap();
        assert_eq!((a.scale, a.load_scale), (2, 2));
        assert_eq!(a.tools, [ToolKind::Pgshift, ToolKind::Native]);
        assert!(a.smoke());
        let a = parse(&["--scenarios", "cutover,load"]).unwrap();
        assert_eq!(a.scenarios, [Scenario::Load, Scenario::Cutover]);
        let a = parse(&["--scenarios", "copy-create"]).unwrap();
        assert_eq!(a.scenarios, [Scenario::CopyCreate]);
        for bad in [
            &["--tools", "slony"][..],
            &["--scenarios", ""],
            &["--scale", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
