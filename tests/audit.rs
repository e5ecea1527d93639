//! The audit trail: every POST, PUT, PATCH and DELETE under /api/v1 is recorded (who, what, on
//! which object, from where, with what result), readable at `GET /api/v1/audit`, and never holds
//! a request body's secrets.

use pgshift::auth::Role;
use pgshift_tests::server::TestServer;
use pgshift_tests::{init_tracing, PgCluster};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PASSWORD: &str = "Audit-s3cret-pw";

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("request reaches the server");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn audit(server: &TestServer, query: &str) -> Vec<Value> {
    let (status, body) = server.get(&format!("/audit{query}")).await;
    assert_eq!(status, StatusCode::OK, "GET /audit{query}: {body}");
    body.as_array()
        .unwrap_or_else(|| panic!("audit list: {body}"))
        .clone()
}

/// (status, actor, route, object_name) of each entry, newest first.
fn summary(entries: &[Value]) -> Vec<(u64, String, String, Option<String>)> {
    entries
        .iter()
        .map(|e| {
            (
                e["status"].as_u64().unwrap(),
                e["actor"].as_str().unwrap().to_string(),
                e["route"].as_str().unwrap().to_string(),
                e["object_name"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn s(v: &str) -> String {
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_audited_without_secrets() {
    init_tracing();
    let pg = PgCluster::start().await;
    // Behind a local proxy, itself behind one in 10/8: both are trusted to name the client.
    let server = TestServer::start_configured(|c| {
        c.trusted_proxies = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
    })
    .await;
    let client = &server.client;
    // The cluster accepts any password (trust): the DSN carries one all the same.
    let dsn = format!(
        "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
        pg.port()
    );
    assert!(audit(&server, "").await.is_empty());

    // 1. A cluster added, through a proxy.
    let (status, body) = send(
        client
            .post(server.url("/clusters"))
            .bearer_auth(&server.token)
            .header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
            .json(&json!({"name": "src", "dsn": dsn})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // 2. Refused before authentication: counted on /metrics, not recorded.
    let (status, _) = send(
        client
            .post(server.url("/clusters"))
            .json(&json!({"name": "anon", "dsn": dsn})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "pgshift_http_unauthenticated_refusals_total 1"),
        "{metrics}"
    );
    // 3. Refused as unprocessable, the password in the body.
    let (status, body) = send(
        client
            .post(server.url("/clusters"))
            .bearer_auth(&server.token)
            .header("x-forwarded-for", "not an address")
            .json(&json!({"name": "bad", "dsn": format!("postgresql://u:{PASSWORD}@127.0.0.1:notaport/db")})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // 4. A viewer trying to start a migration.
    let viewer = server.token_for(Role::Viewer, "alice").await;
    let (status, body) = send(
        client
            .post(server.url("/migrations/shop/start"))
            .bearer_auth(&viewer),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // 5. A migration that does not exist.
    let (status, _) = server.post("/migrations/nope/pause", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Reads are not recorded.
    let (status, _) = server.get("/clusters").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server.get("/clusters/src").await;
    assert_eq!(status, StatusCode::OK);
    // 6. The cluster removed.
    let (status, body) = server.delete("/clusters/src").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let entries = audit(&server, "").await;
    assert_eq!(
        summary(&entries),
        [
            (
                204,
                s("pgshift"),
                s("/api/v1/clusters/{name}"),
                Some(s("src"))
            ),
            (
                404,
                s("pgshift"),
                s("/api/v1/migrations/{name}/pause"),
                Some(s("nope"))
            ),
            (
                403,
                s("alice"),
                s("/api/v1/migrations/{name}/start"),
                Some(s("shop"))
            ),
            (422, s("pgshift"), s("/api/v1/clusters"), None),
            (201, s("pgshift"), s("/api/v1/clusters"), Some(s("src"))),
        ],
        "{entries:#?}"
    );
    let [delete, pause, start, bad, create] = &entries[..] else {
        unreachable!()
    };
    assert_eq!(create["action"], "cluster.create");
    assert_eq!(create["method"], "POST");
    assert_eq!(create["object_kind"], "cluster");
    assert_eq!(create["role"], "admin");
    assert!(create["token_id"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(create["client_ip"], "203.0.113.7");
    assert_eq!(create["error_code"], Value::Null);
    // Without a forwarded address, the peer's (the test runs on this machine).
    assert_eq!(delete["client_ip"], "127.0.0.1");
    assert_eq!(bad["error_code"], "invalid_dsn");
    assert_eq!(
        bad["client_ip"], "127.0.0.1",
        "a malformed header is ignored: the peer's address"
    );
    assert_eq!(start["role"], "viewer");
    assert_eq!(start["action"], "migration.start");
    assert_eq!(start["object_kind"], "migration");
    assert_eq!(start["error_code"], "forbidden");
    assert_ne!(start["token_id"], create["token_id"]);
    assert_eq!(pause["action"], "migration.pause");
    assert_eq!(pause["error_code"], "not_found");
    assert_eq!(delete["action"], "cluster.delete");
    assert_eq!(delete["error_code"], Value::Null);
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let times: Vec<&str> = entries.iter().map(|e| e["at"].as_str().unwrap()).collect();
    for t in &times {
        chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("{t}: {e}"));
    }

    // Filters and limits.
    let src = audit(&server, "?cluster=src").await;
    assert_eq!(
        summary(&src),
        [summary(&entries)[0].clone(), summary(&entries)[4].clone()]
    );
    let shop = audit(&server, "?migration=shop").await;
    assert_eq!(summary(&shop), [summary(&entries)[2].clone()]);
    assert!(audit(&server, "?cluster=shop").await.is_empty());
    assert_eq!(audit(&server, "?limit=2").await, entries[..2].to_vec());
    assert_eq!(audit(&server, "?limit=5000").await.len(), entries.len());
    let (status, body) = server.get("/audit?limit=lots").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_query");

    // Any role reads it; nobody without a token does.
    let (status, body) = send(client.get(server.url("/audit")).bearer_auth(&viewer)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().unwrap().len(), entries.len());
    let (status, _) = send(client.get(server.url("/audit"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // No secret anywhere: not in what the API returns, nor in the table itself.
    let everything = audit(&server, "?limit=1000").await;
    assert!(!Value::from(everything).to_string().contains(PASSWORD));
    let db = server.data_dir.join("pgshift.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws('|', id, at, actor, token_id, role, action, method, route,
                          object_kind, object_name, client_ip, status, error_code)
         FROM audit",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), entries.len());
    for row in rows {
        assert!(!row.contains(PASSWORD), "{row}");
    }
    pool.close().await;

    // A trail that cannot be written does not fail the request.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("ALTER TABLE audit RENAME TO audit_away")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (status, body) = server.delete("/clusters/nothere").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = server
        .post("/clusters", json!({"name": "again", "dsn": dsn}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "again");
}
