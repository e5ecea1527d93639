//! The REST API's contract: authentication, and a clear 4xx for every input the caller can fix.

use std::time::Duration;

use pgshift_tests::server::TestServer;
use pgshift_tests::{init_tracing, PgCluster};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PASSWORD: &str = "s3cret-Pa55word";

fn code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

#[track_caller]
fn refused(result: (StatusCode, Value), status: StatusCode, expected_code: &str) -> String {
    let (got, body) = result;
    assert_eq!(
        got, status,
        "expected {status} {expected_code}, got {got}: {body}"
    );
    assert_eq!(code(&body), expected_code, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty());
    assert!(
        !body.to_string().contains(PASSWORD),
        "the password leaked into a response: {body}"
    );
    message
}

#[tokio::test]
async fn every_route_needs_a_valid_token() {
    init_tracing();
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/clusters"),
        ("POST", "/clusters"),
        ("GET", "/migrations"),
        ("POST", "/migrations/x/start"),
        ("DELETE", "/migrations/x"),
    ] {
        let url = server.url(path);
        for auth in [
            None,
            Some("Bearer nonsense"),
            Some("Basic YWRtaW46YWRtaW4="),
            Some(&*format!("Bearer {}x", server.token)),
        ] {
            let mut req = client.request(method.parse().unwrap(), &url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}"
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(code(&body), "unauthorized");
        }
    }
    // alg: none is refused even with the right claims.
    let parts: Vec<&str> = server.token.split('.').collect();
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let forged = format!("{none_header}.{}.", parts[1]);
    let resp = client
        .get(server.url("/clusters"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = client
        .get(server.url("/clusters"))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx() {
    init_tracing();
    let (source, target) = tokio::join!(PgCluster::start(), PgCluster::start());
    let server = TestServer::start().await;

    // Malformed bodies.
    let resp = server
        .client
        .post(server.url("/clusters"))
        .bearer_auth(&server.token)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(&resp.json().await.unwrap()), "malformed_json");
    refused(
        server.post("/clusters", json!({"name": "x"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    refused(
        server
            .post(
                "/clusters",
                json!({"name": "x", "dsn": "postgresql://a@b/c", "extra": 1}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    refused(
        server
            .post(
                "/clusters",
                json!({"name": "bad name!", "dsn": source.admin_dsn()}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_name",
    );

    // DSNs that do not parse, hosts that do not answer, wrong passwords, missing databases.
    let msg = refused(
        server
            .post(
                "/clusters",
                json!({"name": "x", "dsn": format!("host=foo password={PASSWORD}")}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_dsn",
    );
    assert!(msg.contains("postgresql://"), "{msg}");
    refused(
        server.post("/clusters", json!({"name": "x", "dsn": format!("postgresql://u:{PASSWORD}@127.0.0.1:notaport/db")})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_dsn",
    );
    // Connection refused: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    refused(
        server.post("/clusters", json!({"name": "x", "dsn": format!("postgresql://u:{PASSWORD}@127.0.0.1:{closed_port}/db")})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unreachable",
    );
    // A server that accepts and never answers: the connect timeout bounds the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let started = std::time::Instant::now();
    refused(
        server.post("/clusters", json!({"name": "x", "dsn": format!("postgresql://u:{PASSWORD}@127.0.0.1:{silent_port}/db")})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unreachable",
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the connect timeout did not bound the wait"
    );
    hold.abort();

    source
        .psql(
            "postgres",
            &format!("CREATE ROLE migrator LOGIN PASSWORD '{PASSWORD}'; CREATE ROLE limited LOGIN"),
        )
        .await;
    source.create_database("app").await;
    // Password authentication for migrator only.
    let hba = source.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all migrator 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    source.psql("postgres", "SELECT pg_reload_conf()").await;
    let port = source.port();
    refused(
        server.post("/clusters", json!({"name": "x", "dsn": format!("postgresql://migrator:wrong-{PASSWORD}@127.0.0.1:{port}/postgres")})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "authentication_failed",
    );
    refused(
        server.post("/clusters", json!({"name": "x", "dsn": format!("postgresql://migrator:{PASSWORD}@127.0.0.1:{port}/nosuchdb")})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "database_not_found",
    );

    // A good cluster, whose password never comes back.
    let (status, body) = server
        .post("/clusters", json!({"name": "source", "dsn": format!("postgresql://migrator:{PASSWORD}@127.0.0.1:{port}/postgres")}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(!body.to_string().contains(PASSWORD));
    assert!(body["server_version"].as_str().unwrap().starts_with("15"));
    refused(
        server
            .post(
                "/clusters",
                json!({"name": "source", "dsn": source.admin_dsn()}),
            )
            .await,
        StatusCode::CONFLICT,
        "duplicate_name",
    );
    server.add_cluster("target", &target.admin_dsn()).await;
    server
        .add_cluster(
            "limited",
            &format!("postgresql://limited@127.0.0.1:{port}/postgres"),
        )
        .await;
    let (_, list) = server.get("/clusters").await;
    assert!(!list.to_string().contains(PASSWORD));
    refused(
        server.get("/clusters/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let schema = "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, w int); CREATE TABLE nokey (v text); CREATE TABLE c (id int PRIMARY KEY)";
    source.psql("app", schema).await;
    source.psql("app", "GRANT CREATE ON DATABASE app TO migrator; GRANT SELECT, TRIGGER ON ALL TABLES IN SCHEMA public TO migrator; GRANT SELECT ON ALL TABLES IN SCHEMA public TO limited").await;
    target.create_database("app").await;
    target.psql("app", "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, w bigint); CREATE TABLE c (id int PRIMARY KEY)").await;

    let migration = |name: &str, src: &str, db: &str, tables: Value| json!({"name": name, "source": {"cluster": src, "database": db}, "target": {"cluster": "target", "database": "app"}, "tables": tables});
    refused(
        server.post("/migrations", json!({"name": "m"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    refused(
        server
            .post(
                "/migrations",
                migration("m", "ghost", "app", json!(["public.a"])),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_cluster",
    );
    refused(
        server
            .post(
                "/migrations",
                migration("m", "source", "nosuchdb", json!(["public.a"])),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "database_not_found",
    );
    let msg = refused(
        server
            .post(
                "/migrations",
                migration("m", "source", "app", json!(["public.zz*"])),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "pattern_matches_nothing",
    );
    assert!(msg.contains("public.zz*"), "{msg}");
    // A table without a key is not refused: it is replicated with whole-row identity.
    let (status, created) = server
        .post(
            "/migrations",
            migration("nokey", "source", "app", json!(["public.nokey"])),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["tables"][0]["identity"], "whole row", "{created}");
    let (status, removed) = server.delete("/migrations/nokey").await;
    assert!(status.is_success(), "{status} {removed}");
    let msg = refused(
        server
            .post(
                "/migrations",
                migration("m", "source", "app", json!(["public.b"])),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "target_columns_differ",
    );
    assert!(
        msg.contains("public.b: column w is integer on the source but bigint on the target"),
        "{msg}"
    );
    source.psql("app", "CREATE TABLE only_here (id int PRIMARY KEY); GRANT SELECT, TRIGGER ON only_here TO migrator").await;
    // Schema "existing": the operator says the tables are there (without it pgshift would
    // create this one, which the target lacks).
    let mut existing = migration("m", "source", "app", json!(["public.only_here"]));
    existing["schema"] = json!("existing");
    let msg = refused(
        server.post("/migrations", existing).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "target_table_missing",
    );
    assert!(msg.contains("public.only_here"), "{msg}");
    let msg = refused(
        server
            .post(
                "/migrations",
                migration("m", "limited", "app", json!(["public.a"])),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_privilege",
    );
    assert!(
        msg.contains("TRIGGER on \"public\".\"a\"") && msg.contains("CREATE on database"),
        "{msg}"
    );
    target.psql("app", "INSERT INTO c VALUES (1)").await;
    refused(
        server
            .post(
                "/migrations",
                migration("m", "source", "app", json!(["public.c"])),
            )
            .await,
        StatusCode::CONFLICT,
        "target_not_empty",
    );
    refused(
        server
            .post(
                "/migrations",
                migration("bad name", "source", "app", json!(["public.a"])),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_name",
    );

    // A good migration; then duplicates, unknown names and wrong transitions.
    let (status, body) = server
        .post(
            "/migrations",
            migration("m", "source", "app", json!(["public.a"])),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "created");
    assert_eq!(body["tables"][0]["name"], "public.a");
    refused(
        server
            .post(
                "/migrations",
                migration("m", "source", "app", json!(["public.a"])),
            )
            .await,
        StatusCode::CONFLICT,
        "duplicate_name",
    );
    refused(
        server.get("/migrations/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        server.post("/migrations/nope/start", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        server.post("/migrations/m/resume", json!({})).await,
        StatusCode::CONFLICT,
        "not_started",
    );
    refused(
        server.post("/migrations/m/pause", json!({})).await,
        StatusCode::CONFLICT,
        "not_started",
    );
    refused(
        server.delete("/clusters/source").await,
        StatusCode::CONFLICT,
        "cluster_in_use",
    );
    refused(
        server.get("/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let (status, body) = server.delete("/migrations/m").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _) = server.delete("/clusters/limited").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    init_tracing();
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let resp = client
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    server.get("/clusters").await;
    server.get("/clusters/nope").await;
    let resp = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let body = resp.text().await.unwrap();
    // Requests are counted under their route pattern, not the raw path.
    assert!(
        body.contains(
            r#"pgshift_http_requests_total{method="GET",route="/api/v1/clusters",status="200"} 1"#
        ),
        "{body}"
    );
    assert!(
        body.contains(r#"route="/api/v1/clusters/{name}",status="404""#),
        "{body}"
    );
    assert!(
        body.contains("pgshift_http_request_duration_seconds_bucket"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"));
}
