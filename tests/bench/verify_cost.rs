//! `bench-verify-cost`: what the cutover's default content verification costs, next to counting
//! rows only (the default before it).
//!
//! ```sh
//! cargo run -p pgshift-tests --bin bench-verify-cost -- [--rows 200000] [--rounds 2] [--writers 2]
//! ```
//!
//! Two throwaway PostgreSQL 15 servers with the cutover tests' schema (`item`, `ledger` and
//! `"Odd Pair"`, `--rows` rows each), a migration synced between them, then `--rounds` pairs of
//! cutovers, alternating `checksums: false` (row counts inside the freeze) and the default
//! (every row compared range by range before the freeze, inside it the rows written since).
//! Every cutover arms the reverse migration, so the next one moves the database back; writers
//! commit on the current source right up to each freeze. Per cutover it prints how long writes
//! were blocked, the verify step's share of it, the range pass before the freeze, and how many
//! rows the freeze compared again. Progress goes to stderr, the table to stdout.

use std::time::Duration;

use pgshift_tests::cutover::{cutover, pair, start_synced, step, wait_synced, Writers};
use pgshift_tests::server::TestServer;
use pgshift_tests::wait_for;
use serde_json::{json, Value};

struct Args {
    rows: i64,
    rounds: usize,
    writers: usize,
}

fn usage() -> ! {
    eprintln!("usage: bench-verify-cost [--rows N] [--rounds N] [--writers N]");
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        rows: 200_000,
        rounds: 2,
        writers: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        match flag.as_str() {
            "--rows" => a.rows = value.parse().unwrap_or_else(|_| usage()),
            "--rounds" => a.rounds = value.parse().unwrap_or_else(|_| usage()),
            "--writers" => a.writers = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    a
}

/// Seconds a step of `op` took, from its recorded start and end.
fn step_seconds(op: &Value, name: &str) -> Option<f64> {
    let s = op["steps"].as_array()?.iter().find(|s| s["name"] == name)?;
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok();
    let (a, b) = (time(&s["started_at"])?, time(&s["finished_at"])?);
    Some((b - a).num_microseconds()? as f64 / 1e6)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |s| format!("{:.0}", s * 1000.0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let args = args();
    eprintln!(
        "seeding {} rows in each of 3 tables and syncing them",
        args.rows
    );
    let pair = pair(args.rows).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;
    let mut name = "shop".to_string();
    let mut source_dsn = pair.source.dsn("app");
    let mut target_dsn = pair.target.dsn("app");
    println!(
        "| round | verification | writes blocked (ms) | verify step (ms) | range pass before the freeze (ms) | rows compared in the freeze |"
    );
    println!("|---|---|---|---|---|---|");
    for round in 1..=args.rounds * 2 {
        let content = round % 2 == 0;
        let mut writers = Writers::spawn(source_dsn.clone(), args.writers);
        wait_for("writers to commit", Duration::from_secs(60), || async {
            (writers.committed() > 50).then_some(())
        })
        .await;
        let next = format!("{name}-r");
        eprintln!("round {round}: cutover of {name} (content: {content})");
        let op = cutover(
            &server,
            &name,
            json!({"checksums": content, "reverse": true, "reverse_name": next, "max_lag_seconds": 60}),
        )
        .await;
        assert_eq!(op["state"], "succeeded", "{op}");
        writers.join().await;
        let rechecked: u64 = step(&op, "verify")["detail"]["tables"]
            .as_array()
            .map(|t| t.iter().filter_map(|t| t["rows_rechecked"].as_u64()).sum())
            .unwrap_or(0);
        println!(
            "| {round} | {} | {} | {} | {} | {} |",
            if content {
                "content (default)"
            } else {
                "row counts"
            },
            ms(op["result"]["writes_blocked_seconds"].as_f64()),
            ms(step_seconds(&op, "verify")),
            ms(step_seconds(&op, "verify_ranges")),
            if content {
                rechecked.to_string()
            } else {
                "–".into()
            }
        );
        name = next;
        std::mem::swap(&mut source_dsn, &mut target_dsn);
        wait_synced(&server, &name).await;
    }
}
