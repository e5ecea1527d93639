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
