//! Running pgbench on the source, reading its output, and the Markdown rows made of a run.

use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio_util::sync::CancellationToken;

use crate::bench::Bench;
use crate::common::{secs, Ctx, R};
use crate::samplers::{spawn_wait_sampler, CpuUse};
use crate::say;

/// What one pgbench run printed, and the CPU used while it ran.
pub struct Pgbench {
    pub tps: f64,
    pub latency_ms: Option<f64>,
    pub transactions: Option<u64>,
    pub failed: Option<String>,
    pub output: String,
    pub cpu: Option<CpuUse>,
    /// Where pgbench's backends were, from pg_stat_activity samples: (state: wait, share).
    pub waits: Vec<(String, f64)>,
}

/// The most frequent states of pgbench's backends, as a Markdown table.
pub fn waits_table(runs: &[(&str, &Pgbench)]) -> String {
    let mut s = String::from(
        "| Run | Where pgbench's backends were (share of samples of `pg_stat_activity`, every 100 ms) |\n|---|---|\n",
    );
    for (label, p) in runs {
        let top: Vec<String> = p
            .waits
            .iter()
            .take(6)
            .map(|(k, share)| format!("{k} {:.0}%", share * 100.0))
            .collect();
        s.push_str(&format!("| {label} | {} |\n", top.join(", ")));
    }
    s
}

pub fn cpu_row(label: &str, p: &Pgbench) -> String {
    p.cpu.as_ref().map_or_else(
        || format!("| {label} | – | – | – | – | – | – |"),
        |c| c.row(label),
    )
}

impl Bench {
    /// VACUUM ANALYZE of the database that pgbench is about to hit, then CHECKPOINT on both clusters.
    pub async fn prepare_run(&self, db: &PgPool) -> R<()> {
        sqlx::query("VACUUM ANALYZE")
            .execute(db)
            .await
            .ctx(|| "VACUUM ANALYZE".into())?;
        self.checkpoint().await
    }

    /// `pgbench -c -j -T` on the source's `db`, sampling the CPU used and where its backends wait.
    pub async fn pgbench(&self, db: &str) -> R<Pgbench> {
        let (c, j, t) = (
            self.args.clients.to_string(),
            self.args.threads().to_string(),
            self.args.seconds.to_string(),
        );
        say!("pgbench -c {c} -j {j} -T {t} {db}");
        let cpu_before = self.cpu();
        let stop = CancellationToken::new();
        let waits = spawn_wait_sampler(self.src.clone(), db.to_string(), stop.clone());
        let child = self
            .source
            .spawn_pgbench(&["-c", &c, "-j", &j, "-T", &t, db]);
        let limit = Duration::from_secs(u64::from(self.args.seconds) + 300);
        // On timeout the child is dropped, which kills it.
        let out = tokio::time::timeout(limit, child.wait_with_output()).await;
        stop.cancel();
        let out = out
            .map_err(|_| format!("pgbench on {db} did not finish within {}", secs(limit)))?
            .ctx(|| "waiting for pgbench".into())?;
        let cpu = CpuUse::between(&cpu_before, &self.cpu());
        let waits = waits.await.ctx(|| "wait-event sampler".into())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(format!(
                "pgbench on {db} failed ({}):\n{}\n{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut p = parse_pgbench(&stdout)?;
        p.cpu = Some(cpu);
        p.waits = waits;
        Ok(p)
    }
}

pub fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3} ms"))
}

pub fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

fn parse_pgbench(out: &str) -> R<Pgbench> {
    let field = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
            .map(str::to_string)
    };
    let tps = out
        .lines()
        .filter(|l| l.contains("without initial connection time"))
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| {
            format!(
                "no `tps = … (without initial connection time)` line in pgbench's output:\n{out}"
            )
        })?;
    Ok(Pgbench {
        tps,
        latency_ms: field("latency average =")
            .and_then(|v| v.split_whitespace().next()?.parse().ok()),
        transactions: field("number of transactions actually processed:")
            .and_then(|v| v.split_whitespace().next()?.parse().ok()),
        failed: field("number of failed transactions:"),
        output: out.to_string(),
        cpu: None,
        waits: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_output() {
        let out = "\
transaction type: <builtin: TPC-B (sort of)>
scaling factor: 2
query mode: simple
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 8123
number of failed transactions: 0 (0.000%)
latency average = 4.921 ms
initial connection time = 12.345 ms
tps = 812.345678 (without initial connection time)
";
        let p = parse_pgbench(out).unwrap();
        assert_eq!(p.tps, 812.345678);
        assert_eq!(p.latency_ms, Some(4.921));
        assert_eq!(p.transactions, Some(8123));
        assert_eq!(p.failed.as_deref(), Some("0 (0.000%)"));
        assert!(parse_pgbench("nothing").is_err());
    }
}
