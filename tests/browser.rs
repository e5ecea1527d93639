//! End to end in a real browser: headless Chromium (Debian's `chromium`) driven through
//! `chromedriver` with fantoccini. Signs in, adds two clusters (testing the connection first),
//! creates a migration with the table preview, starts it while a workload writes to the source,
//! watches every table reach `synced` on the live page, then waits for every preflight gate to
//! pass, stops the workload and cuts over from the panel, and compares both sides. Saves a
//! screenshot of each page to tests/artifacts/.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use pgshift::auth::Role;
use pgshift_tests::dashboard::create_user;
use pgshift_tests::migrate::assert_same_rows;
use pgshift_tests::server::TestServer;
use pgshift_tests::workload::{self, SCHEMA, TABLES};
use pgshift_tests::{init_tracing, wait_for, PgCluster};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ADMIN_PW: &str = "browser-admin-pw";
const WAIT: Duration = Duration::from_secs(120);

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("tests/artifacts is writable");
    dir
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: run tests/setup.sh (it installs Debian's chromium and chromium-driver)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_for("chromedriver to answer", Duration::from_secs(30), || {
            let status = status.clone();
            async move {
                let resp = reqwest::get(&status).await.ok()?;
                resp.status().is_success().then_some(())
            }
        })
        .await;
        Driver { child, url }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                // --no-sandbox: the tests may run as root, where Chromium's sandbox cannot start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1400", "--hide-scrollbars", "--force-device-scale-factor=1"]
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(format!("{name}.png")), png).expect("screenshot written");
}

async fn fill(c: &Client, css: &str, text: &str) {
    let field = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

/// Waits until `css` matches an element whose `attr` satisfies `ok`.
async fn wait_attr(c: &Client, what: &str, css: &str, attr: &str, ok: impl Fn(&str) -> bool) {
    wait_for(what, WAIT, || async {
        let el = c.find(Locator::Css(css)).await.ok()?;
        let value = el.attr(attr).await.ok()??;
        ok(&value).then_some(())
    })
    .await
}

/// Scrolls the element with this id to the top of the window (for the screenshot).
async fn scroll_to(c: &Client, id: &str) {
    c.execute(
        "document.getElementById(arguments[0]).scrollIntoView()",
        vec![json!(id)],
    )
    .await
    .unwrap_or_else(|e| panic!("scrolling to #{id}: {e}"));
}

async fn wait_element(c: &Client, what: &str, css: &str) {
    wait_for(what, WAIT, || async {
        c.find(Locator::Css(css)).await.ok().map(|_| ())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_add_clusters_create_start_and_watch_a_migration_sync() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("app").await;
    target.create_database("app").await;
    source.psql("app", SCHEMA).await;
    target.psql("app", SCHEMA).await;
    let src = source.connect("app").await;
    let dst = target.connect("app").await;
    workload::seed(&src, 2_000, 11).await;
    let server = TestServer::start().await;
    create_user(&server.data_dir, "adam", Role::Admin, ADMIN_PW).await;
    let driver = Driver::start().await;
    let c = driver.browser().await;
    let base = &server.base;

    // Sign in.
    c.goto(&format!("{base}/ui")).await.unwrap();
    wait_element(&c, "the sign-in form", "#sign-in").await;
    fill(&c, "#name", "adam").await;
    fill(&c, "#password", ADMIN_PW).await;
    screenshot(&c, "01-sign-in").await;
    click(&c, "#sign-in").await;
    wait_element(&c, "the overview", "header.top nav").await;

    // Add both clusters, testing the connection first.
    for (name, cluster) in [("old-server", &source), ("new-server", &target)] {
        c.goto(&format!("{base}/ui/clusters")).await.unwrap();
        fill(&c, "#cluster-name", name).await;
        fill(&c, "#cluster-dsn", &cluster.admin_dsn()).await;
        click(&c, "#test-connection").await;
        wait_element(&c, "the connection report", "#connection-ok").await;
        if name == "new-server" {
            screenshot(&c, "02-clusters-test-connection").await;
        }
        click(&c, "#add-cluster-submit").await;
        wait_element(
            &c,
            "the new cluster in the list",
            &format!("tr[data-cluster='{name}']"),
        )
        .await;
    }
    screenshot(&c, "03-clusters").await;

    // New migration: the preview lists the tables the engine accepts.
    c.goto(&format!("{base}/ui/migrations/new")).await.unwrap();
    fill(&c, "#name", "shop").await;
    c.find(Locator::Css("#source_cluster"))
        .await
        .unwrap()
        .select_by_value("old-server")
        .await
        .unwrap();
    c.find(Locator::Css("#target_cluster"))
        .await
        .unwrap()
        .select_by_value("new-server")
        .await
        .unwrap();
    fill(&c, "#source_database", "app").await;
    fill(&c, "#target_database", "app").await;
    fill(&c, "#tables", "public.*").await;
    wait_element(&c, "the table preview", "#preview-tables").await;
    screenshot(&c, "04-new-migration").await;
    click(&c, "#create-migration").await;
    wait_element(&c, "the migration's page", "#action-start").await;

    // Start it while a workload writes to the source, and watch every table reach synced.
    let stop = Arc::new(AtomicBool::new(false));
    let (stats, writers) =
        workload::spawn_workload(source.dsn("app"), 2, 1_000_000, 2_000, 5, stop.clone());
    click(&c, "#action-start").await;
    wait_element(
        &c,
        "the pause button of a running migration",
        "#action-pause",
    )
    .await;
    wait_attr(
        &c,
        "a table being copied or synced",
        "#tables tbody tr",
        "data-state",
        |s| s != "pending",
    )
    .await;
    screenshot(&c, "05-migration-copying").await;
    wait_attr(
        &c,
        "the migration to be synced",
        "#migration-state",
        "data-state",
        |s| s == "synced",
    )
    .await;
    let table_states: Vec<String> = {
        let rows = c.find_all(Locator::Css("#tables tbody tr")).await.unwrap();
        let mut states = Vec::new();
        for row in rows {
            states.push(row.attr("data-state").await.unwrap().unwrap_or_default());
        }
        states
    };
    assert!(
        !table_states.is_empty() && table_states.iter().all(|s| s == "synced"),
        "{table_states:?}"
    );
    // The chart has a few samples (one every 5 s) before the picture is taken.
    wait_attr(
        &c,
        "lag samples in the chart",
        "#lag-chart",
        "data-points",
        |n| n.parse::<usize>().unwrap_or(0) >= 4,
    )
    .await;
    screenshot(&c, "06-migration-synced").await;

    c.goto(&format!("{base}/ui")).await.unwrap();
    wait_element(
        &c,
        "the migration on the overview",
        "tr[data-migration='shop']",
    )
    .await;
    screenshot(&c, "07-overview").await;

    // The cutover panel: wait for every gate to pass (the lag gate's threshold raised, for a
    // busy test machine), stop the workload (its writes would fail at the freeze, by design),
    // type the name, press cutover and wait for the result.
    c.goto(&format!("{base}/ui/migrations/shop")).await.unwrap();
    wait_element(&c, "the cutover form", "#cutover-start").await;
    fill(&c, "#cutover-max-lag", "30").await;
    wait_attr(
        &c,
        "every preflight gate to pass",
        "#gates",
        "data-all-passed",
        |v| v == "true",
    )
    .await;
    let start = c.find(Locator::Css("#cutover-start")).await.unwrap();
    assert!(
        !start.is_enabled().await.unwrap(),
        "the button waits for the name"
    );
    scroll_to(&c, "cutover").await;
    screenshot(&c, "08-cutover-ready").await;

    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        stats.committed.load(Ordering::Relaxed) > 0,
        "the workload wrote nothing"
    );
    fill(&c, "#cutover-confirm", "shop").await;
    wait_for("the cutover button to be enabled", WAIT, || async {
        let b = c.find(Locator::Css("#cutover-start")).await.ok()?;
        b.is_enabled().await.ok()?.then_some(())
    })
    .await;
    click(&c, "#cutover-start").await;
    wait_attr(
        &c,
        "the cutover's result",
        "#cutover-result",
        "data-state",
        |s| s != "running",
    )
    .await;
    let outcome = c
        .find(Locator::Css("#cutover-result"))
        .await
        .unwrap()
        .attr("data-state")
        .await
        .unwrap();
    assert_eq!(outcome.as_deref(), Some("succeeded"));
    wait_attr(
        &c,
        "the migration to show as cut over",
        "#migration-state",
        "data-state",
        |s| s == "cut_over",
    )
    .await;
    scroll_to(&c, "cutover").await;
    screenshot(&c, "09-cutover-done").await;
    for (table, order) in TABLES {
        assert_same_rows(&src, &dst, table, order).await;
    }

    c.goto(&format!("{base}/ui")).await.unwrap();
    wait_element(
        &c,
        "the cut-over migration on the overview",
        "tr[data-migration='shop'] .s-cut_over",
    )
    .await;
    screenshot(&c, "10-overview-cut-over").await;
    c.close().await.unwrap();
}
