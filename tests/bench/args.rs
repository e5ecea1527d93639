//! The command line: options, and which phases to run.

use std::path::PathBuf;

use crate::common::{self, R};

pub const USAGE: &str = "\
usage: bench-engine [--scale N] [--clients N] [--seconds N] [--cutovers N] [--out PATH] [--only LIST]

  --scale N     pgbench scale factor: N x 100,000 accounts (default 20)
  --clients N   pgbench clients for the write-overhead and lag runs (default 4)
  --seconds N   length of each pgbench run (default 60)
  --cutovers N  cutovers in the `cutover` phase (default 20)
  --out PATH    where to write the Markdown report (default docs/benchmarks/engine.md
                in the workspace)
  --only LIST   run only these phases, comma-separated (default: all of them):
                  copy      1. initial copy, against pg_dump | pg_restore
                  overhead  2-4. write overhead, lag under load, drain (and diagnostic 2b)
                  bulk      5. bulk UPDATE and bulk DELETE
                  cutover   6. cutovers under pgbench load, --cutovers of them (only
                            when named: it ends the migration, so it runs after the others)
                Setup always runs; without `copy`, pgshift still copies the tables
                (unmeasured) since the other phases need a synced migration.

Run it with: cargo run --release -p pgshift-tests --bin bench-engine -- [options]";

/// A part of the benchmark that `--only` can select; they always run in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Copy,
    Overhead,
    Bulk,
    Cutover,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Copy, Phase::Overhead, Phase::Bulk];
    /// Phases run only when `--only` names them, after the others.
    pub const OPTIONAL: [Phase; 1] = [Phase::Cutover];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Copy => "copy",
            Phase::Overhead => "overhead",
            Phase::Bulk => "bulk",
            Phase::Cutover => "cutover",
        }
    }

    /// The report's figures that the phase measures.
    pub fn figures(self) -> &'static str {
        match self {
            Phase::Copy => "1",
            Phase::Overhead => "2, 2b, 3 and 4",
            Phase::Bulk => "5",
            Phase::Cutover => "6",
        }
    }
}

#[derive(Clone)]
pub struct Args {
    pub scale: u32,
    pub clients: u32,
    pub seconds: u32,
    /// Cutovers in the `cutover` phase.
    pub cutovers: u32,
    pub out: PathBuf,
    /// The phases to run, in [`Phase::ALL`] order.
    pub phases: Vec<Phase>,
    pub raw: Vec<String>,
}

impl Args {
    pub fn parse() -> R<Args> {
        Self::parse_from(std::env::args().skip(1).collect())
    }

    fn parse_from(raw: Vec<String>) -> R<Args> {
        let mut args = Args {
            scale: 20,
            clients: 4,
            seconds: 60,
            cutovers: 20,
            out: common::workspace_root().join("docs/benchmarks/engine.md"),
            phases: Phase::ALL.to_vec(),
            raw: raw.clone(),
        };
        common::each_flag(&raw, USAGE, |key, value| {
            let number = |v: String| common::positive(key, v);
            match key {
                "--scale" => args.scale = number(value()?)?,
                "--clients" => args.clients = number(value()?)?,
                "--seconds" => args.seconds = number(value()?)?,
                "--cutovers" => args.cutovers = number(value()?)?,
                "--out" => args.out = PathBuf::from(value()?),
                "--only" => args.phases = parse_phases(&value()?)?,
                other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
            }
            Ok(())
        })?;
        Ok(args)
    }

    pub fn command_line(&self) -> String {
        let mut s = String::from("cargo run --release -p pgshift-tests --bin bench-engine");
        if !self.raw.is_empty() {
            s.push_str(" --");
            for a in &self.raw {
                s.push(' ');
                s.push_str(&common::shell_quote(a));
            }
        }
        s
    }

    pub fn threads(&self) -> u32 {
        self.clients.min(2)
    }

    pub fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// Whether `--only` left some phase out.
    pub fn partial(&self) -> bool {
        self.phases.len() < Phase::ALL.len()
    }

    /// "copy (figure 1), bulk (figure 5)": the phases run, for the report and progress lines.
    pub fn phase_list(&self) -> String {
        self.phases
            .iter()
            .map(|p| {
                let f = p.figures();
                let s = if f.len() > 1 { "s" } else { "" };
                format!("{} (figure{s} {f})", p.name())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// For the top of the report when `--only` left some phase out: what ran, and how that
    /// run differs from a full one.
    pub fn partial_note(&self) -> Option<String> {
        if !self.partial() {
            return None;
        }
        let skipped: Vec<&str> = Phase::ALL
            .into_iter()
            .filter(|p| !self.runs(*p))
            .map(Phase::name)
            .collect();
        let mut note = format!(
            "partial run (`--only`): only {} ran; {} {} skipped, so their figures are missing. \
             Setup is that of a full run.",
            self.phase_list(),
            skipped.join(" and "),
            if skipped.len() > 1 { "were" } else { "was" }
        );
        if !self.runs(Phase::Copy) {
            note.push_str(
                " pgshift's initial copy still ran, unmeasured, since the other phases need a synced migration.",
            );
        }
        if self.runs(Phase::Bulk) && !self.runs(Phase::Overhead) {
            note.push_str(
                " `bulk` ran without the `overhead` phase's pgbench runs before it, so on a \
                 `pgbench_accounts` that pgbench has not updated (no dead rows from it), unlike in a full run.",
            );
        }
        Some(note)
    }
}

/// `--only`'s comma-separated names, in run order whatever order they were given in.
fn parse_phases(list: &str) -> R<Vec<Phase>> {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    let valid = || {
        Phase::ALL
            .iter()
            .chain(&Phase::OPTIONAL)
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for n in &names {
        if !Phase::ALL
            .iter()
            .chain(&Phase::OPTIONAL)
            .any(|p| p.name() == *n)
        {
            return Err(format!(
                "--only: unknown phase {n:?} (phases: {})\n\n{USAGE}",
                valid()
            ));
        }
    }
    Ok(Phase::ALL
        .into_iter()
        .chain(Phase::OPTIONAL)
        .filter(|p| names.contains(&p.name()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> R<Args> {
        Args::parse_from(args.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn every_phase_by_default() {
        let a = parse(&["--scale", "3"]).unwrap();
        assert_eq!(a.phases, Phase::ALL);
        assert!(!a.partial());
        assert_eq!(a.scale, 3);
        assert_eq!(a.cutovers, 20);
    }

    #[test]
    fn cutovers_is_a_positive_count() {
        let a = parse(&["--only", "cutover", "--cutovers", "5"]).unwrap();
        assert_eq!(
            (a.phases.as_slice(), a.cutovers),
            ([Phase::Cutover].as_slice(), 5)
        );
        assert_eq!(parse(&["--cutovers=3"]).unwrap().cutovers, 3);
        for bad in ["0", "-1", "x", ""] {
            assert!(parse(&["--cutovers", bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_some_phases_in_run_order() {
        let a = parse(&["--only", "bulk, copy"]).unwrap();
        assert_eq!(a.phases, [Phase::Copy, Phase::Bulk]);
        assert!(a.partial() && a.runs(Phase::Bulk) && !a.runs(Phase::Overhead));
        assert_eq!(a.phase_list(), "copy (figure 1), bulk (figure 5)");
        let a = parse(&["--only=overhead,overhead"]).unwrap();
        assert_eq!(a.phases, [Phase::Overhead]);
        assert_eq!(a.phase_list(), "overhead (figures 2, 2b, 3 and 4)");
        assert!(!parse(&["--only=copy,overhead,bulk"]).unwrap().partial());
    }

    #[test]
    fn the_report_says_what_ran() {
        assert_eq!(parse(&[]).unwrap().partial_note(), None);
        let copy = parse(&["--only", "copy"]).unwrap().partial_note().unwrap();
        assert!(copy.contains("only copy (figure 1) ran; overhead and bulk were skipped"));
        assert!(!copy.contains("unmeasured") && !copy.contains("dead rows"));
        let bulk = parse(&["--only", "bulk"]).unwrap().partial_note().unwrap();
        assert!(bulk.contains("copy and overhead were skipped"));
        assert!(bulk.contains("unmeasured") && bulk.contains("dead rows"));
        let two = parse(&["--only", "overhead,bulk"])
            .unwrap()
            .partial_note()
            .unwrap();
        assert!(two.contains("copy was skipped") && !two.contains("dead rows"));
    }

    #[test]
    fn rejects_unknown_or_empty_phases() {
        for bad in ["lag", "", "copy,", "copy,,bulk"] {
            assert!(parse(&["--only", bad]).is_err(), "{bad:?}");
        }
        assert!(parse(&["--only"]).is_err());
    }
}
