//! The dashboard over HTTP: sign-in and sessions, CSRF and Origin refusal, roles on every page
//! and action, and a migration driven from its pages against real PostgreSQL servers.

use std::time::Duration;

use pgshift::auth::Role;
use pgshift_tests::dashboard::{create_user, UiClient};
use pgshift_tests::server::TestServer;
use pgshift_tests::{init_tracing, wait_for, PgCluster};
use reqwest::StatusCode;

const ADMIN_PW: &str = "admin-password-1";
const OPERATOR_PW: &str = "operator-password-1";
const VIEWER_PW: &str = "viewer-password-1";

async fn server_with_users() -> TestServer {
    let server = TestServer::start().await;
    create_user(&server.data_dir, "adam", Role::Admin, ADMIN_PW).await;
    create_user(&server.data_dir, "olga", Role::Operator, OPERATOR_PW).await;
    create_user(&server.data_dir, "vera", Role::Viewer, VIEWER_PW).await;
    server
}

#[tokio::test]
async fn sign_in_sessions_and_sign_out() {
    init_tracing();
    let server = server_with_users().await;
    let mut ui = UiClient::new(&server.base);

    let page = ui.get("/ui/clusters").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/ui/sign-in?next=/ui/clusters");
    assert_eq!(ui.get("/").await.location(), "/ui");

    // A wrong password and an unknown user get the same answer.
    let wrong = ui
        .post(
            "/ui/sign-in",
            &[("name", "adam"), ("password", "nope-nope-nope")],
        )
        .await;
    let unknown = ui
        .post(
            "/ui/sign-in",
            &[("name", "nobody"), ("password", "nope-nope-nope")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    let message = |body: &str| {
        let start = body.find("id=\"sign-in-error\">").expect("error shown");
        body[start..start + 60].to_string()
    };
    assert_eq!(message(&wrong.body), message(&unknown.body));
    assert!(ui.cookie.is_none());

    let page = ui
        .post(
            "/ui/sign-in",
            &[
                ("name", "adam"),
                ("password", ADMIN_PW),
                ("next", "/ui/clusters"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), "/ui/clusters");
    let set_cookie = page.headers["set-cookie"].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    // `next` never leads off the dashboard.
    let mut other = UiClient::new(&server.base);
    let page = other
        .post(
            "/ui/sign-in",
            &[
                ("name", "adam"),
                ("password", ADMIN_PW),
                ("next", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!(page.location(), "/ui");

    let page = ui.get("/ui").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("adam · admin"), "{}", page.body);
    let cookie = ui.cookie.clone().unwrap();

    // Signing out needs the CSRF token, and ends the session on the server.
    let page = ui.post("/ui/sign-out", &[("csrf", "forged")]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let csrf = ui.csrf().await;
    let page = ui.post("/ui/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(ui.cookie.is_none());
    ui.cookie = Some(cookie);
    let page = ui.get("/ui").await;
    assert_eq!(
        page.status,
        StatusCode::SEE_OTHER,
        "the old cookie still works"
    );
    assert!(page.location().starts_with("/ui/sign-in"));
}

#[tokio::test]
async fn repeated_failures_are_throttled_even_with_the_right_password() {
    init_tracing();
    let server = server_with_users().await;
    let mut ui = UiClient::new(&server.base);
    for _ in 0..5 {
        let page = ui
            .post(
                "/ui/sign-in",
                &[("name", "olga"), ("password", "guess-guess-guess")],
            )
            .await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    let page = ui
        .post(
            "/ui/sign-in",
            &[("name", "olga"), ("password", OPERATOR_PW)],
        )
        .await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS, "{}", page.body);
    assert!(page.body.contains("too many failed sign-ins"));
    // Other users are not locked out by it.
    ui.sign_in("vera", VIEWER_PW).await;
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    init_tracing();
    let server = server_with_users().await;
    let mut ui = UiClient::new(&server.base);
    ui.sign_in("vera", VIEWER_PW).await;
    let store = pgshift::store::open(None, &server.data_dir).await.unwrap();
    let deleted = store
        .delete_expired_sessions(chrono::Utc::now() + chrono::Duration::hours(13))
        .await
        .unwrap();
    assert_eq!(deleted, 1, "a session lasts 12 hours");
    let page = ui.get("/ui").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn forms_without_the_csrf_token_or_from_another_site_are_refused() {
    init_tracing();
    let server = server_with_users().await;
    let mut ui = UiClient::new(&server.base);
    ui.sign_in("adam", ADMIN_PW).await;
    let csrf = ui.csrf().await;
    for form in [
        vec![
            ("name", "c1"),
            ("dsn", "postgresql://u@127.0.0.1:1/postgres"),
        ],
        vec![
            ("csrf", "forged"),
            ("name", "c1"),
            ("dsn", "postgresql://u@127.0.0.1:1/postgres"),
        ],
    ] {
        let page = ui.post("/ui/clusters", &form).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
        assert!(page.body.contains("Reload the page"), "{}", page.body);
    }
    let page = ui
        .post_with(
            "/ui/clusters",
            &[
                ("csrf", &csrf),
                ("name", "c1"),
                ("dsn", "postgresql://u@127.0.0.1:1/postgres"),
            ],
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("another site"), "{}", page.body);
    // With the token and no foreign origin, the form reaches the service (which cannot connect).
    let page = ui
        .post(
            "/ui/clusters",
            &[
                ("csrf", &csrf),
                ("name", "c1"),
                ("dsn", "postgresql://u@127.0.0.1:1/postgres"),
            ],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"form-error\""), "{}", page.body);
    let (_, clusters) = server.get("/clusters").await;
    assert_eq!(clusters.as_array().unwrap().len(), 0, "{clusters}");
}

const SOURCE_SCHEMA: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric);
    CREATE TABLE notes (id bigint PRIMARY KEY, body text);
    CREATE TABLE keyless (x int);
    INSERT INTO accounts SELECT g, 'owner ' || g, g * 1.5 FROM generate_series(1, 5000) g;
    INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 300) g;";
const TARGET_SCHEMA: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric);
    CREATE TABLE notes (id bigint PRIMARY KEY, body text);";

/// Roles on every page and action, and a migration created, started and watched from its pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_on_pages_and_a_migration_driven_from_the_dashboard() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("shop").await;
    target.create_database("shop").await;
    source.psql("shop", SOURCE_SCHEMA).await;
    target.psql("shop", TARGET_SCHEMA).await;
    let server = server_with_users().await;
    let mut admin = UiClient::new(&server.base);
    let mut operator = UiClient::new(&server.base);
    let mut viewer = UiClient::new(&server.base);
    admin.sign_in("adam", ADMIN_PW).await;
    operator.sign_in("olga", OPERATOR_PW).await;
    viewer.sign_in("vera", VIEWER_PW).await;
    let csrf = admin.csrf().await;

    // Test connection reports the version, and never echoes the password.
    let dsn = source.admin_dsn();
    let page = admin
        .post("/ui/clusters/test", &[("csrf", &csrf), ("dsn", &dsn)])
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("PostgreSQL 15"), "{}", page.body);
    let page = admin
        .post(
            "/ui/clusters/test",
            &[
                ("csrf", &csrf),
                ("dsn", "postgresql://nobody:pw@127.0.0.1:1/postgres"),
            ],
        )
        .await;
    assert!(page.body.contains("Cannot connect"), "{}", page.body);
    // The servers trust local connections; the password is there to be kept out of every page.
    let with_password = |c: &PgCluster| c.admin_dsn().replace("postgres@", "postgres:Sekr1t-pw@");
    for (name, cluster) in [("old", &source), ("new", &target)] {
        let page = admin
            .post(
                "/ui/clusters",
                &[
                    ("csrf", &csrf),
                    ("name", name),
                    ("dsn", &with_password(cluster)),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    }

    // A viewer sees the clusters but no form or button, and is refused the actions.
    let page = viewer.get("/ui/clusters").await;
    assert!(page.body.contains("data-cluster=\"old\""));
    assert!(
        !page.body.contains("Add a cluster") && !page.body.contains(">Remove<"),
        "{}",
        page.body
    );
    let viewer_csrf = page.csrf();
    let page = viewer
        .post("/ui/clusters/old/remove", &[("csrf", &viewer_csrf)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("needs the admin role"), "{}", page.body);
    assert_eq!(
        viewer.get("/ui/migrations/new").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        operator.get("/ui/migrations/new").await.status,
        StatusCode::FORBIDDEN
    );
    let page = admin.get("/ui/clusters").await;
    assert!(page.body.contains("Add a cluster") && page.body.contains(">Remove<"));

    // The preview lists what the patterns select and why the engine refuses a table.
    let preview = "/ui/migrations/preview?source_cluster=old&source_database=shop&target_cluster=new&target_database=shop&tables=public.*";
    let page = admin.get(preview).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("3 table(s) match"), "{}", page.body);
    assert!(page.body.contains("1 will be refused"), "{}", page.body);
    // The table without a key is accepted with whole-row identity; it is refused because the
    // target lacks it.
    assert!(page.body.contains("whole-row identity"), "{}", page.body);
    assert!(
        page.body.contains("data-identity=\"whole row\"")
            && page.body.contains("data-identity=\"primary key\""),
        "{}",
        page.body
    );
    let page = admin
        .get(&preview.replace("public.*", "public.accounts%0Apublic.nope"))
        .await;
    assert!(page.body.contains("matches no table"), "{}", page.body);

    // Creating with the table the target lacks is refused inline; without it, it works.
    let base_form = |tables: &'static str| {
        vec![
            ("name", "shop"),
            ("source_cluster", "old"),
            ("source_database", "shop"),
            ("target_cluster", "new"),
            ("target_database", "shop"),
            ("tables", tables),
        ]
    };
    let mut form = base_form("public.*");
    form.push(("csrf", &csrf));
    let page = admin.post("/ui/migrations", &form).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.body
            .contains("public.keyless: does not exist on the target"),
        "{}",
        page.body
    );
    let mut form = base_form("public.accounts\npublic.notes");
    form.push(("csrf", &csrf));
    let page = admin.post("/ui/migrations", &form).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location(), "/ui/migrations/shop");

    // Buttons follow the role.
    let page = viewer.get("/ui/migrations/shop").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("action-start") && !page.body.contains("action-remove"));
    let page = operator.get("/ui/migrations/shop").await;
    assert!(page.body.contains("action-start") && !page.body.contains("action-remove"));
    let operator_csrf = page.csrf();
    let page = viewer
        .post("/ui/migrations/shop/start", &[("csrf", &viewer_csrf)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = operator
        .post(
            "/ui/migrations/shop/remove",
            &[("csrf", &operator_csrf), ("confirm", "shop")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);

    let page = operator
        .post("/ui/migrations/shop/start", &[("csrf", &operator_csrf)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    wait_for(
        "the live fragment to show every table synced",
        Duration::from_secs(120),
        || {
            let mut viewer = UiClient::new(&server.base);
            viewer.cookie.clone_from(&operator.cookie);
            async move {
                let page = viewer.get("/ui/migrations/shop/live").await;
                (page.body.matches("data-state=\"synced\"").count() == 3).then_some(())
            }
        },
    )
    .await;
    let page = viewer.get("/ui").await;
    assert!(page.body.contains("data-migration=\"shop\"") && page.body.contains("Synced"));
    let page = viewer.get("/ui/migrations/shop/lag.json?range=6h").await;
    assert_eq!(page.status, StatusCode::OK);
    let series: serde_json::Value = serde_json::from_str(&page.body).unwrap();
    assert!(
        series["t"].is_array() && series["lag"].is_array(),
        "{series}"
    );
    assert_eq!(
        viewer
            .get("/ui/migrations/shop/lag.json?range=1y")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // Resync: a link on each table row for operators, none for viewers, to a confirmation page
    // where the table's name is typed (no script: the CSP would block it); it copies the table
    // again (damaged on the target behind pgshift's back first) and the table ends synced.
    let page = viewer.get("/ui/migrations/shop").await;
    assert!(
        !page.body.contains("data-resync="),
        "a viewer got a Resync button"
    );
    let page = operator.get("/ui/migrations/shop").await;
    assert!(
        page.body.contains("data-resync=\"public.accounts\""),
        "{}",
        page.body
    );
    assert!(!page.body.contains("onsubmit="), "{}", page.body);
    let page = operator
        .get("/ui/migrations/shop/tables/public.accounts/resync")
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("id=\"resync-confirm\"") && page.body.contains("id=\"resync-form\""),
        "{}",
        page.body
    );
    assert_eq!(
        viewer
            .get("/ui/migrations/shop/tables/public.accounts/resync")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        operator
            .get("/ui/migrations/shop/tables/public.nothing/resync")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let page = viewer
        .post(
            "/ui/migrations/shop/tables/public.accounts/resync",
            &[("csrf", &viewer_csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let dst = target.connect("shop").await;
    sqlx::query("UPDATE accounts SET owner = 'damaged'")
        .execute(&dst)
        .await
        .unwrap();
    // Without the typed name (a one-click form, as the page had before): refused, nothing done.
    let page = operator
        .post(
            "/ui/migrations/shop/tables/public.accounts/resync",
            &[("csrf", &operator_csrf)],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.body
    );
    let damaged: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts WHERE owner = 'damaged'")
        .fetch_one(&dst)
        .await
        .unwrap();
    assert!(damaged > 0, "the table was resynced without confirmation");
    let page = operator
        .post(
            "/ui/migrations/shop/tables/public.accounts/resync",
            &[("csrf", &operator_csrf), ("confirm", "public.accounts")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    wait_for(
        "the resynced table to be synced without the damage",
        Duration::from_secs(120),
        || {
            let dst = dst.clone();
            let mut client = UiClient::new(&server.base);
            client.cookie.clone_from(&operator.cookie);
            async move {
                let page = client.get("/ui/migrations/shop/live").await;
                let damaged: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM accounts WHERE owner = 'damaged'")
                        .fetch_one(&dst)
                        .await
                        .unwrap();
                (page.body.matches("data-state=\"synced\"").count() == 3 && damaged == 0)
                    .then_some(())
            }
        },
    )
    .await;

    // The page's audit trail names who did what from the dashboard.
    let page = viewer.get("/ui/migrations/shop").await;
    assert!(
        page.body.contains("migration.start") && page.body.contains("olga"),
        "{}",
        page.body
    );
    assert!(page.body.contains("migration.create") && page.body.contains("adam"));

    // Removing needs the name typed again.
    let page = admin
        .post(
            "/ui/migrations/shop/remove",
            &[("csrf", &csrf), ("confirm", "")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    let page = admin
        .post(
            "/ui/migrations/shop/remove",
            &[("csrf", &csrf), ("confirm", "shop")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(
        admin.get("/ui/migrations/shop").await.status,
        StatusCode::NOT_FOUND
    );

    // The clusters page shows the DSN without its password.
    let page = admin.get("/ui/clusters").await;
    assert!(
        page.body.contains("postgresql://postgres@127.0.0.1:"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("Sekr1t-pw"), "{}", page.body);
}

/// The cutover panel: a viewer sees the checklist but no button and is refused the action; the
/// checklist shows a failed gate; the typed name and the CSRF token are checked on the server;
/// an operator's cutover runs to its result, and the migration then shows as cut over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_panel_roles_gates_and_a_cutover() {
    use pgshift_tests::cutover::{assert_same, pair, start_synced};
    init_tracing();
    let pair = pair(300).await;
    let server = server_with_users().await;
    start_synced(&server, &pair, "shop").await;
    let mut operator = UiClient::new(&server.base);
    let mut viewer = UiClient::new(&server.base);
    operator.sign_in("olga", OPERATOR_PW).await;
    viewer.sign_in("vera", VIEWER_PW).await;
    // A generous lag threshold: a busy test machine must not trip the lag gate.
    let gates_url = "/ui/migrations/shop/cutover/gates?max_lag_seconds=60";

    // The viewer: the checklist, no button; the action is refused.
    let page = viewer.get("/ui/migrations/shop").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("id=\"cutover\""), "{}", page.body);
    assert!(!page.body.contains("cutover-start"), "{}", page.body);
    let viewer_csrf = page.csrf();
    let gates = viewer.get(gates_url).await;
    assert_eq!(gates.status, StatusCode::OK, "{}", gates.body);
    assert!(
        gates
            .body
            .contains("data-gate=\"tables_synced\" data-passed=\"true\""),
        "{}",
        gates.body
    );
    assert!(
        !gates.body.contains("hx-trigger=\"every 5s\""),
        "viewers do not poll"
    );
    let page = viewer
        .post(
            "/ui/migrations/shop/cutover",
            &[("csrf", &viewer_csrf), ("confirm", "shop")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);

    // The operator: the button, and a checklist that refreshes itself.
    let page = operator.get("/ui/migrations/shop").await;
    assert!(page.body.contains("id=\"cutover-start\""), "{}", page.body);
    let csrf = page.csrf();
    let gates = operator.get(gates_url).await;
    assert!(
        gates.body.contains("hx-trigger=\"every 5s\""),
        "{}",
        gates.body
    );

    // A disabled trigger on the target fails its gate, with the reason.
    pair.target
        .psql(
            "app",
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
             CREATE TRIGGER touch BEFORE UPDATE ON item FOR EACH ROW EXECUTE FUNCTION touch();
             ALTER TABLE item DISABLE TRIGGER touch;",
        )
        .await;
    let gates = operator.get(gates_url).await;
    assert!(
        gates.body.contains("data-all-passed=\"false\"")
            && gates
                .body
                .contains("data-gate=\"target_ready\" data-passed=\"false\"")
            && gates
                .body
                .contains("trigger touch on public.item is disabled"),
        "{}",
        gates.body
    );
    pair.target
        .psql("app", "ALTER TABLE item ENABLE TRIGGER touch")
        .await;
    wait_for("every gate to pass", Duration::from_secs(60), || async {
        let mut ui = UiClient::new(&server.base);
        ui.cookie.clone_from(&operator.cookie);
        let gates = ui.get(gates_url).await;
        gates
            .body
            .contains("data-all-passed=\"true\"")
            .then_some(())
    })
    .await;

    // Verification on demand: operators only; each table's verdict.
    let page = viewer
        .post("/ui/migrations/shop/verify", &[("csrf", &viewer_csrf)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = operator
        .post("/ui/migrations/shop/verify", &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let verdicts = wait_for(
        "the verification to finish",
        Duration::from_secs(120),
        || async {
            let mut ui = UiClient::new(&server.base);
            ui.cookie.clone_from(&viewer.cookie);
            let page = ui.get("/ui/migrations/shop/verify").await;
            page.body
                .contains("data-state=\"succeeded\"")
                .then_some(page.body)
        },
    )
    .await;
    assert_eq!(
        verdicts.matches("data-verdict=\"match\"").count(),
        3,
        "{verdicts}"
    );
    assert!(verdicts.contains("Everything matches"), "{verdicts}");

    // Without the CSRF token, or with the wrong name, nothing starts.
    let page = operator
        .post(
            "/ui/migrations/shop/cutover",
            &[("confirm", "shop"), ("max_lag_seconds", "60")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    let page = operator
        .post(
            "/ui/migrations/shop/cutover",
            &[
                ("csrf", &csrf),
                ("confirm", "shops"),
                ("max_lag_seconds", "60"),
            ],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.body
    );
    assert!(page.body.contains("type the migration"), "{}", page.body);
    let (_, ops) = server.get("/migrations/shop/operations").await;
    assert!(
        ops.as_array()
            .unwrap()
            .iter()
            .all(|o| o["kind"] == "verify"),
        "{ops}"
    );

    // The cutover itself, followed on the progress fragment to its result.
    let page = operator
        .post(
            "/ui/migrations/shop/cutover",
            &[
                ("csrf", &csrf),
                ("confirm", "shop"),
                ("max_lag_seconds", "60"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let progress = wait_for(
        "the cutover to finish",
        Duration::from_secs(120),
        || async {
            let mut ui = UiClient::new(&server.base);
            ui.cookie.clone_from(&viewer.cookie);
            let page = ui
                .get_with(
                    "/ui/migrations/shop/cutover/progress?was=running",
                    &[("hx-request", "true")],
                )
                .await;
            page.body.contains("id=\"cutover-result\"").then_some(page)
        },
    )
    .await;
    assert_eq!(
        progress
            .headers
            .get("hx-refresh")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "the page reloads when the cutover ends"
    );
    assert!(
        progress.body.contains("data-state=\"succeeded\"")
            && progress.body.contains("Writes were blocked for"),
        "{}",
        progress.body
    );
    for step in [
        "preflight",
        "verify_ranges",
        "freeze",
        "drain",
        "sequences",
        "verify",
        "finish",
    ] {
        assert!(
            progress
                .body
                .contains(&format!("data-step=\"{step}\" data-outcome=\"succeeded\"")),
            "{step}: {}",
            progress.body
        );
    }
    assert_same(&pair.src, &pair.dst).await;

    // Cut over: the result stays, no more actions or checklist, and the state reads so everywhere.
    let page = operator.get("/ui/migrations/shop").await;
    assert!(
        page.body.contains("Writes were blocked for"),
        "{}",
        page.body
    );
    for gone in [
        "cutover-start",
        "action-pause",
        "action-start",
        "id=\"gates\"",
    ] {
        assert!(!page.body.contains(gone), "{gone}: {}", page.body);
    }
    assert!(page.body.contains("s-cut_over"), "{}", page.body);
    let page = viewer.get("/ui").await;
    assert!(page.body.contains("s-cut_over") && page.body.contains("Cut over"));
    let page = operator
        .post(
            "/ui/migrations/shop/cutover",
            &[("csrf", &csrf), ("confirm", "shop")],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    // Abort: operators only, and only while a cutover runs.
    let page = viewer
        .post(
            "/ui/migrations/shop/cutover/abort",
            &[("csrf", &viewer_csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = operator
        .post("/ui/migrations/shop/cutover/abort", &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    assert!(
        page.body.contains("no operation is running"),
        "{}",
        page.body
    );
    let page = viewer.get("/ui/migrations/shop").await;
    assert!(
        page.body.contains("migration.cutover") && page.body.contains("olga"),
        "{}",
        page.body
    );
}

/// Admins manage users from the dashboard: a new role, a new password or removal ends that
/// user's sessions at once; nobody else may; the last admin stays.
#[tokio::test]
async fn admins_manage_users_and_their_sessions_end_at_once() {
    init_tracing();
    let server = server_with_users().await;
    let mut olga = UiClient::new(&server.base);
    olga.sign_in("olga", OPERATOR_PW).await;
    let mut vera = UiClient::new(&server.base);
    vera.sign_in("vera", VIEWER_PW).await;
    assert_eq!(olga.get("/ui/users").await.status, StatusCode::FORBIDDEN);
    let olga_csrf = olga.csrf().await;
    let page = olga
        .post(
            "/ui/users/vera/role",
            &[("csrf", &olga_csrf), ("role", "admin")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);

    let mut adam = UiClient::new(&server.base);
    adam.sign_in("adam", ADMIN_PW).await;
    let page = adam.get("/ui/users").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for row in [
        r#"data-user="adam" data-role="admin""#,
        r#"data-user="olga" data-role="operator""#,
        r#"data-user="vera" data-role="viewer""#,
    ] {
        assert!(page.body.contains(row), "{row}: {}", page.body);
    }
    assert!(!page.body.contains("$argon2"), "a hash on the page");
    let csrf = page.csrf();
    let page = adam
        .post(
            "/ui/users/olga/role",
            &[("csrf", "forged"), ("role", "viewer")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);

    // A new role: olga's session ends; signed in again, she is a viewer.
    let page = adam
        .post(
            "/ui/users/olga/role",
            &[("csrf", &csrf), ("role", "viewer")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = olga.get("/ui").await;
    assert_eq!(
        page.status,
        StatusCode::SEE_OTHER,
        "olga's session outlived her role"
    );
    olga.sign_in("olga", OPERATOR_PW).await;
    assert!(olga.get("/ui").await.body.contains("olga · viewer"));

    // A new password: vera's session ends, and only the new password works.
    let page = adam
        .post(
            "/ui/users/vera/password",
            &[("csrf", &csrf), ("password", "short")],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    let page = adam
        .post(
            "/ui/users/vera/password",
            &[("csrf", &csrf), ("password", "vera-new-password-2")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(vera.get("/ui").await.status, StatusCode::SEE_OTHER);
    let page = vera
        .post("/ui/sign-in", &[("name", "vera"), ("password", VIEWER_PW)])
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    vera.sign_in("vera", "vera-new-password-2").await;

    // Removal needs the name typed; then the session ends and the user cannot sign in.
    let page = adam.post("/ui/users/olga/remove", &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    let page = adam
        .post(
            "/ui/users/olga/remove",
            &[("csrf", &csrf), ("confirm", "olga")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(olga.get("/ui").await.status, StatusCode::SEE_OTHER);
    let page = olga
        .post(
            "/ui/sign-in",
            &[("name", "olga"), ("password", OPERATOR_PW)],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(!adam
        .get("/ui/users")
        .await
        .body
        .contains(r#"data-user="olga""#));

    // The only admin cannot demote or remove themselves (the server's first admin, `admin`,
    // made a viewer first).
    let page = adam
        .post(
            "/ui/users/admin/role",
            &[("csrf", &csrf), ("role", "viewer")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let page = adam
        .post(
            "/ui/users/adam/role",
            &[("csrf", &csrf), ("role", "operator")],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    let page = adam
        .post(
            "/ui/users/adam/remove",
            &[("csrf", &csrf), ("confirm", "adam")],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    assert_eq!(adam.get("/ui/users").await.status, StatusCode::OK);
}

/// The migration page's table set: operators add tables with a form (patterns, CSRF) and stop
/// replicating one from its row through a confirmation page where its name is typed; viewers get
/// neither; a refusal shows the server's reason; both land in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_added_and_removed_from_the_migration_page() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    source.create_database("shop").await;
    target.create_database("shop").await;
    source.psql("shop", SOURCE_SCHEMA).await;
    target.psql("shop", TARGET_SCHEMA).await;
    let server = server_with_users().await;
    server.add_cluster("source", &source.admin_dsn()).await;
    server.add_cluster("target", &target.admin_dsn()).await;
    server
        .create_and_start("shop", "shop", "shop", Some(vec!["public.accounts"]))
        .await;
    let synced = || async {
        wait_for(
            "the migration to be synced",
            Duration::from_secs(120),
            || async {
                let m = server.migration("shop").await;
                (m["state"] == "synced").then_some(m)
            },
        )
        .await
    };
    synced().await;
    let mut operator = UiClient::new(&server.base);
    let mut viewer = UiClient::new(&server.base);
    operator.sign_in("olga", OPERATOR_PW).await;
    viewer.sign_in("vera", VIEWER_PW).await;
    let operator_csrf = operator.csrf().await;
    let viewer_csrf = viewer.csrf().await;

    let page = viewer.get("/ui/migrations/shop").await;
    assert!(
        !page.body.contains("id=\"add-tables-form\""),
        "{}",
        page.body
    );
    let page = operator.get("/ui/migrations/shop").await;
    assert!(
        page.body.contains("id=\"add-tables-form\""),
        "{}",
        page.body
    );
    // One table: nothing to stop replicating (the migration would be left empty).
    assert!(!page.body.contains("data-remove-table="), "{}", page.body);

    let page = viewer
        .post(
            "/ui/migrations/shop/tables",
            &[("csrf", &viewer_csrf), ("patterns", "public.notes")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = operator
        .post(
            "/ui/migrations/shop/tables",
            &[("patterns", "public.notes")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "no CSRF token");
    let page = operator
        .post(
            "/ui/migrations/shop/tables",
            &[("csrf", &operator_csrf), ("patterns", "public.accounts")],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.body
    );
    assert!(page.body.contains("already"), "{}", page.body);
    let page = operator
        .post(
            "/ui/migrations/shop/tables",
            &[("csrf", &operator_csrf), ("patterns", "public.notes")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let m = synced().await;
    assert_eq!(m["tables"].as_array().unwrap().len(), 2, "{m}");
    let dst = target.connect("shop").await;
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&dst)
        .await
        .unwrap();
    assert_eq!(notes, 300);

    let page = operator.get("/ui/migrations/shop").await;
    assert!(
        page.body.contains("data-remove-table=\"public.notes\""),
        "{}",
        page.body
    );
    assert!(!viewer
        .get("/ui/migrations/shop")
        .await
        .body
        .contains("data-remove-table="));
    let page = operator
        .get("/ui/migrations/shop/tables/public.notes/remove")
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("id=\"remove-table-confirm\""),
        "{}",
        page.body
    );
    assert_eq!(
        viewer
            .get("/ui/migrations/shop/tables/public.notes/remove")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // Without the typed name: refused, still replicated.
    let page = operator
        .post(
            "/ui/migrations/shop/tables/public.notes/remove",
            &[("csrf", &operator_csrf)],
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.body
    );
    assert_eq!(
        server.migration("shop").await["tables"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let page = operator
        .post(
            "/ui/migrations/shop/tables/public.notes/remove",
            &[("csrf", &operator_csrf), ("confirm", "public.notes")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let m = server.migration("shop").await;
    assert_eq!(m["tables"].as_array().unwrap().len(), 1, "{m}");
    let src = source.connect("shop").await;
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'notes'::regclass AND tgname LIKE '!pgshift%'",
    )
    .fetch_one(&src)
    .await
    .unwrap();
    assert_eq!(triggers, 0);

    let page = operator.get("/ui/migrations/shop").await;
    let trail = &page.body[page.body.find("Audit trail").unwrap()..];
    assert!(trail.contains("migration.tables.add"), "{trail}");
    assert!(trail.contains("migration.tables.remove"), "{trail}");
}
