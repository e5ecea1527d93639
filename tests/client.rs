//! The `pgshift` client commands against a running server and real PostgreSQL clusters: every
//! subcommand, table and `--json` output, the exit codes, and `migration wait` both succeeding
//! once synced and timing out with its reason.

use pgshift::client::{run_async, Exit};
use pgshift_tests::migrate::assert_same_rows;
use pgshift_tests::server::TestServer;
use pgshift_tests::{init_tracing, PgCluster};
use serde_json::Value;

struct Output {
    exit: Exit,
    out: String,
    err: String,
}

impl Output {
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.exit, Exit::Ok, "stderr: {}", self.err);
        assert!(self.err.is_empty(), "stderr: {}", self.err);
        &self.out
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {}", self.out))
    }

    /// A failure: the expected exit, nothing on stdout, and exactly one line on stderr.
    #[track_caller]
    fn failed(&self, exit: Exit) -> &str {
        assert_eq!(self.exit, exit, "stdout: {} stderr: {}", self.out, self.err);
        assert_eq!(
            self.err.lines().count(),
            1,
            "one reason line: {:?}",
            self.err
        );
        assert!(self.err.starts_with("pgshift: "), "{}", self.err);
        &self.err
    }
}

/// `pgshift ARGS --url … --token …`, in-process.
async fn pgshift(server: &TestServer, args: &[&str]) -> Output {
    let mut full = vec!["pgshift"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--url", &server.base, "--token", &server.token]);
    raw(&full).await
}

async fn raw(args: &[&str]) -> Output {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = run_async(args.iter().copied(), &mut out, &mut err).await;
    Output {
        exit,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

/// The column where `header` starts in the first line, and the same column's text in `line`.
fn column<'a>(table: &str, header: &str, line: &'a str) -> &'a str {
    let at = table.lines().next().unwrap().find(header).unwrap();
    line[at..].split("  ").next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_running_server() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    let schema = "CREATE TABLE items (id int PRIMARY KEY, v text)";
    source.create_database("shop").await;
    target.create_database("shop").await;
    source.psql("shop", schema).await;
    target.psql("shop", schema).await;
    source
        .psql(
            "shop",
            "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g",
        )
        .await;
    let server = TestServer::start().await;

    // Clusters.
    let added = pgshift(
        &server,
        &["cluster", "add", "old", "--dsn", &source.admin_dsn()],
    )
    .await;
    assert!(
        added.ok().starts_with("cluster old added: PostgreSQL 15"),
        "{}",
        added.out
    );
    let added = pgshift(
        &server,
        &[
            "cluster",
            "add",
            "new",
            "--dsn",
            &target.admin_dsn(),
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(added["name"], "new");
    let again = pgshift(
        &server,
        &["cluster", "add", "new", "--dsn", &target.admin_dsn()],
    )
    .await;
    assert!(
        again.failed(Exit::Api).contains("duplicate_name"),
        "{}",
        again.err
    );
    let list = pgshift(&server, &["cluster", "list"]).await;
    let table = list.ok();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("VERSION"),
        "{table}"
    );
    assert_eq!(column(table, "NAME", lines[1]), "new");
    assert_eq!(column(table, "NAME", lines[2]), "old");
    assert!(
        column(table, "VERSION", lines[2]).starts_with("15"),
        "{table}"
    );
    assert!(
        column(table, "DSN", lines[2]).starts_with("postgresql://"),
        "{table}"
    );
    let list = pgshift(&server, &["cluster", "--json", "list"])
        .await
        .json();
    assert_eq!(list.as_array().unwrap().len(), 2);

    // A migration, created; waiting for it times out while it is not started.
    let bad = pgshift(
        &server,
        &[
            "migration",
            "create",
            "shop",
            "--source",
            "old",
            "--target",
            "new:shop",
        ],
    )
    .await;
    assert!(
        bad.failed(Exit::Usage).contains("CLUSTER:DATABASE"),
        "{}",
        bad.err
    );
    let created = pgshift(
        &server,
        &[
            "migration",
            "create",
            "shop",
            "--source",
            "old:shop",
            "--target",
            "new:shop",
            "--table",
            "public.*",
        ],
    )
    .await;
    assert!(
        created
            .ok()
            .starts_with("migration shop created: 1 table from old:shop to new:shop"),
        "{}",
        created.out
    );
    let missing_cluster = pgshift(
        &server,
        &[
            "migration",
            "create",
            "other",
            "--source",
            "nope:shop",
            "--target",
            "new:shop",
        ],
    )
    .await;
    assert!(
        missing_cluster
            .failed(Exit::Api)
            .contains("unknown_cluster"),
        "{}",
        missing_cluster.err
    );

    let timed_out = pgshift(
        &server,
        &[
            "migration",
            "wait",
            "shop",
            "--synced",
            "--timeout",
            "1s",
            "--interval",
            "200ms",
        ],
    )
    .await;
    let reason = timed_out.failed(Exit::Timeout);
    assert!(
        reason.contains("timed out after 1s waiting for migration shop to be synced")
            && reason.contains("state created"),
        "{reason}"
    );
    let no_goal = pgshift(&server, &["migration", "wait", "shop"]).await;
    assert!(no_goal.failed(Exit::Usage).contains("--synced"));
    let bad_duration = pgshift(
        &server,
        &["migration", "wait", "shop", "--lag-below", "2 weeks"],
    )
    .await;
    bad_duration.failed(Exit::Usage);

    // Started, then waited for: synced with a small lag.
    let started = pgshift(&server, &["migration", "start", "shop"]).await;
    assert!(
        started.ok().starts_with("migration shop: "),
        "{}",
        started.out
    );
    let synced = pgshift(
        &server,
        &[
            "migration",
            "wait",
            "shop",
            "--synced",
            "--lag-below",
            "2s",
            "--timeout",
            "120s",
            "--interval",
            "200ms",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(synced["state"], "synced", "{synced}");
    assert!(synced["lag_seconds"].as_f64().unwrap() < 2.0, "{synced}");
    let (sp, tp) = tokio::join!(source.connect("shop"), target.connect("shop"));
    assert_eq!(assert_same_rows(&sp, &tp, "items", "id").await, 500);
    let waited = pgshift(&server, &["migration", "wait", "shop", "--synced"]).await;
    assert!(
        waited
            .ok()
            .starts_with("migration shop is synced: state synced"),
        "{}",
        waited.out
    );

    let list = pgshift(&server, &["migration", "list"]).await;
    let table = list.ok();
    let row = table.lines().nth(1).unwrap();
    assert_eq!(column(table, "NAME", row), "shop");
    assert_eq!(column(table, "STATE", row), "synced");
    assert_eq!(column(table, "TABLES", row), "1/1");
    assert_eq!(column(table, "SOURCE", row), "old:shop");
    let list = pgshift(&server, &["migration", "list", "--json"])
        .await
        .json();
    assert_eq!(list[0]["name"], "shop");
    let show = pgshift(&server, &["migration", "show", "shop"]).await;
    let text = show.ok();
    assert!(
        text.lines()
            .any(|l| l.starts_with("state:") && l.ends_with("synced")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("public.items") && l.contains("synced")),
        "{text}"
    );
    let show = pgshift(&server, &["migration", "show", "shop", "--json"])
        .await
        .json();
    assert_eq!(show["tables"][0]["rows_copied"], 500);

    let paused = pgshift(&server, &["migration", "pause", "shop", "--json"])
        .await
        .json();
    assert_eq!(paused["state"], "paused");
    let paused_again = pgshift(&server, &["migration", "start", "shop"]).await;
    assert!(paused_again.failed(Exit::Api).contains("paused"));
    let resumed = pgshift(&server, &["migration", "resume", "shop"]).await;
    assert!(
        resumed.ok().starts_with("migration shop: "),
        "{}",
        resumed.out
    );
    pgshift(
        &server,
        &[
            "migration",
            "wait",
            "shop",
            "--synced",
            "--timeout",
            "120s",
            "--interval",
            "200ms",
        ],
    )
    .await
    .ok();

    // Not found, refused, unreachable: each its own exit code and one line.
    for args in [
        &["migration", "show", "nope"][..],
        &["migration", "start", "nope"],
        &["migration", "wait", "nope", "--synced"],
        &["cluster", "remove", "nope"],
    ] {
        let missing = pgshift(&server, args).await;
        assert!(
            missing.failed(Exit::NotFound).contains("not found"),
            "{args:?}: {}",
            missing.err
        );
    }
    let in_use = pgshift(&server, &["cluster", "remove", "old"]).await;
    assert!(
        in_use.failed(Exit::Api).contains("HTTP 409"),
        "{}",
        in_use.err
    );
    let refused = raw(&[
        "pgshift",
        "migration",
        "list",
        "--url",
        &server.base,
        "--token",
        "not-a-token",
    ])
    .await;
    assert!(
        refused.failed(Exit::Api).contains("unauthorized"),
        "{}",
        refused.err
    );
    let unreachable = raw(&[
        "pgshift",
        "cluster",
        "list",
        "--url",
        "http://127.0.0.1:1",
        "--token",
        "t",
    ])
    .await;
    assert!(
        unreachable
            .failed(Exit::Unreachable)
            .contains("cannot reach"),
        "{}",
        unreachable.err
    );
    let usage = raw(&["pgshift", "migration", "frobnicate"]).await;
    usage.failed(Exit::Usage);
    let help = raw(&["pgshift", "migration", "--help"]).await;
    assert!(help.ok().contains("wait"), "{}", help.out);

    // Removal.
    let removed = pgshift(&server, &["migration", "remove", "shop"]).await;
    assert_eq!(removed.ok(), "migration shop removed\n");
    let removed = pgshift(&server, &["cluster", "remove", "old", "--json"])
        .await
        .json();
    assert_eq!(removed["name"], "old");
    let list = pgshift(&server, &["cluster", "list", "--json"])
        .await
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let list = pgshift(&server, &["migration", "list"]).await;
    assert_eq!(
        list.ok().lines().count(),
        1,
        "only the header: {}",
        list.out
    );
}

/// A wait keeps asking a server it cannot reach (it may be restarting) until its timeout, then
/// says what the last request hit.
#[tokio::test]
async fn wait_outlasts_an_unreachable_server_then_times_out() {
    let out = raw(&[
        "pgshift",
        "migration",
        "wait",
        "shop",
        "--synced",
        "--timeout",
        "1s",
        "--interval",
        "100ms",
        "--url",
        "http://127.0.0.1:1",
        "--token",
        "t",
    ])
    .await;
    let reason = out.failed(Exit::Timeout);
    assert!(
        reason.contains("timed out after 1s") && reason.contains("cannot reach"),
        "{reason}"
    );
}

/// `migration verify`: 0 while both sides match, 7 (with the differing table named) once a row
/// is changed on the target behind pgshift's back, and `--repair` puts it right (0 again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_exits_7_on_differences_and_repair_fixes_them() {
    use pgshift_tests::cutover::{assert_same, pair, start_synced};
    init_tracing();
    let pair = pair(2_000).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let matched = pgshift(&server, &["migration", "verify", "shop"]).await;
    let text = matched.ok();
    assert!(text.contains("  verify: succeeded"), "{text}");
    assert!(
        text.contains("public.item") && text.contains("match"),
        "{text}"
    );
    assert!(!text.contains("differs"), "{text}");

    pair.target
        .psql("app", "UPDATE item SET note = 'tampered' WHERE id = 1234")
        .await;
    let differs = pgshift(&server, &["migration", "verify", "shop"]).await;
    let reason = differs.failed(Exit::Differences);
    assert_eq!(Exit::Differences.code(), 7);
    assert!(
        reason.contains("found differences in public.item") && !reason.contains("ledger"),
        "{reason}"
    );
    let item_line = differs
        .out
        .lines()
        .find(|l| l.starts_with("public.item"))
        .unwrap_or_else(|| panic!("{}", differs.out));
    assert!(item_line.contains("differs"), "{}", differs.out);
    assert!(!differs.out.contains("succeeded\n"), "{}", differs.out);

    let repaired = pgshift(
        &server,
        &["migration", "verify", "shop", "--repair", "--json"],
    )
    .await;
    let op = repaired.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["result"]["differs"], false, "{op}");
    assert_eq!(op["result"]["repaired"][0]["table"], "public.item", "{op}");
    assert_same(&pair.src, &pair.dst).await;
    pgshift(&server, &["migration", "verify", "shop"])
        .await
        .ok();

    // `operation show` prints what was just followed; `--no-wait` only starts it.
    let shown = pgshift(
        &server,
        &["operation", "show", op["id"].as_str().unwrap(), "--json"],
    )
    .await
    .json();
    assert_eq!(shown["id"], op["id"]);
    assert_eq!(shown["kind"], "verify");
    let started = pgshift(&server, &["migration", "verify", "shop", "--no-wait"]).await;
    assert!(
        started.ok().contains("pgshift operation show "),
        "{}",
        started.out
    );
    let missing = pgshift(&server, &["migration", "verify", "nope"]).await;
    missing.failed(Exit::NotFound);
}

/// `migration cutover`: a failed gate exits 8 naming the gate and the step; `--dry-run` runs the
/// gates only; the real cutover ends with the migration cut over and exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_follows_its_steps_and_fails_with_the_gate_named() {
    use pgshift_tests::cutover::{assert_same, pair, start_synced};
    init_tracing();
    let pair = pair(500).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    // A disabled trigger on the target fails the target_ready gate.
    pair.target
        .psql(
            "app",
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
             CREATE TRIGGER touch BEFORE UPDATE ON item FOR EACH ROW EXECUTE FUNCTION touch();
             ALTER TABLE item DISABLE TRIGGER touch;",
        )
        .await;
    let gate = pgshift(
        &server,
        &["migration", "cutover", "shop", "--max-lag", "60s"],
    )
    .await;
    let reason = gate.failed(Exit::OperationFailed);
    assert_eq!(Exit::OperationFailed.code(), 8);
    assert!(
        reason.contains("failed at step preflight") && reason.contains("target_ready"),
        "{reason}"
    );
    assert!(gate.out.contains("  preflight: failed"), "{}", gate.out);
    pair.target
        .psql("app", "ALTER TABLE item ENABLE TRIGGER touch")
        .await;

    let dry = pgshift(
        &server,
        &[
            "migration",
            "cutover",
            "shop",
            "--dry-run",
            "--max-lag",
            "60s",
        ],
    )
    .await;
    let text = dry.ok();
    assert!(text.contains("  preflight: succeeded"), "{text}");
    assert!(text.contains("dry run (gates only)"), "{text}");
    assert_eq!(server.migration("shop").await["state"], "synced");

    // Nothing to abort, and bad flags are usage errors before any request.
    let abort = pgshift(&server, &["migration", "cutover-abort", "shop"]).await;
    assert!(
        abort.failed(Exit::Api).contains("operation_not_running"),
        "{}",
        abort.err
    );
    let bad = pgshift(
        &server,
        &["migration", "cutover", "shop", "--max-lag", "soon"],
    )
    .await;
    bad.failed(Exit::Usage);

    let real = pgshift(
        &server,
        &[
            "migration",
            "cutover",
            "shop",
            "--max-lag",
            "60s",
            "--checksums",
            "--json",
        ],
    )
    .await;
    let op = real.json();
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["kind"], "cutover");
    assert_eq!(server.migration("shop").await["state"], "cut_over");
    assert_same(&pair.src, &pair.dst).await;
    let shown = pgshift(&server, &["operation", "show", op["id"].as_str().unwrap()]).await;
    let text = shown.ok();
    assert!(
        text.contains("succeeded") && text.contains("preflight"),
        "{text}"
    );

    // A cut-over migration cannot be cut over again.
    let again = pgshift(&server, &["migration", "cutover", "shop"]).await;
    assert!(
        again.failed(Exit::Api).contains("cut_over"),
        "{}",
        again.err
    );
}

/// `migration tables remove|add`: a table leaves the migration and comes back (its rows left on
/// the target are refused until `--empty-target`); refusals exit 3 or 4 with the server's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_removed_and_added_from_the_command_line() {
    use pgshift_tests::cutover::{assert_same, pair, start_synced, wait_synced};
    init_tracing();
    let pair = pair(500).await;
    let server = TestServer::start().await;
    start_synced(&server, &pair, "shop").await;

    let removed = pgshift(
        &server,
        &["migration", "tables", "remove", "shop", "public.ledger"],
    )
    .await;
    let text = removed.ok();
    assert!(text.contains("no longer replicated"), "{text}");
    assert!(
        text.contains("public.item") && !text.contains("public.ledger"),
        "{text}"
    );
    let unknown = pgshift(
        &server,
        &["migration", "tables", "remove", "shop", "public.ledger"],
    )
    .await;
    unknown.failed(Exit::NotFound);

    let refused = pgshift(
        &server,
        &["migration", "tables", "add", "shop", "public.led*"],
    )
    .await;
    let reason = refused.failed(Exit::Api);
    assert!(
        reason.contains("public.ledger") && reason.contains("empty_target"),
        "{reason}"
    );
    let nothing = pgshift(
        &server,
        &["migration", "tables", "add", "shop", "public.item"],
    )
    .await;
    assert!(
        nothing.failed(Exit::Api).contains("already"),
        "{}",
        nothing.err
    );

    let added = pgshift(
        &server,
        &[
            "migration",
            "tables",
            "add",
            "shop",
            "public.led*",
            "--empty-target",
            "--json",
        ],
    )
    .await
    .json();
    let names: Vec<&str> = added["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"public.ledger"), "{added}");
    pair.source
        .psql(
            "app",
            "INSERT INTO ledger (item_id, amount) VALUES (1, 9.99)",
        )
        .await;
    wait_synced(&server, "shop").await;
    pgshift_tests::migrate::wait_drained(
        &server,
        "shop",
        &pair.src,
        std::time::Duration::from_secs(120),
    )
    .await;
    assert_same(&pair.src, &pair.dst).await;

    let usage = pgshift(&server, &["migration", "tables", "add", "shop"]).await;
    usage.failed(Exit::Usage);
}
