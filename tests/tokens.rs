//! Token records and revocation: issue, list and revoke over the API and with `pgshift token`;
//! a revoked token is refused from the next request on, on every instance sharing the metadata
//! store; expired, forged, unsigned and foreign tokens are refused.

use std::path::PathBuf;
use std::time::Duration;

use pgshift::app::Application;
use pgshift::auth::{Keys, Role};
use pgshift::cli_tokens::TokenCommand;
use pgshift::client::Exit;
use pgshift::config::ServeConfig;
use pgshift_tests::server::{test_settings, TestServer};
use pgshift_tests::{init_tracing, PgCluster};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;

async fn call(req: reqwest::RequestBuilder, token: &str) -> (StatusCode, Value) {
    let resp = req.bearer_auth(token).send().await.expect("request");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn issue_list_and_revoke_over_the_api() {
    init_tracing();
    let server = TestServer::start().await;
    let c = &server.client;

    let (status, issued) = server
        .post(
            "/tokens",
            json!({"role": "operator", "subject": "deploy-pipeline", "ttl_hours": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let token = issued["token"].as_str().unwrap().to_string();
    let id = issued["id"].as_str().unwrap().to_string();
    assert_eq!(issued["role"], "operator");
    assert_eq!(issued["subject"], "deploy-pipeline");
    assert_eq!(issued["state"], "active");
    assert_eq!(issued["created_by"], "pgshift");
    let claims = Keys::load_or_create(&server.data_dir)
        .unwrap()
        .verify(&token)
        .expect("the issued token is valid");
    assert_eq!(claims.jti, id);
    assert_eq!(claims.role, Role::Operator);
    assert_eq!(claims.exp - claims.iat, 2 * 3600);

    // Listed, without the token itself.
    let (status, list) = server.get("/tokens").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(!list.to_string().contains(&token), "{list}");
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} in {list}"));
    assert_eq!(entry["subject"], "deploy-pipeline");
    assert!(entry["revoked_at"].is_null());

    // The new token works for its role, and only for its role.
    let (status, _) = call(c.get(server.url("/clusters")), &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(c.get(server.url("/tokens")), &token).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = call(
        c.post(server.url("/tokens"))
            .json(&json!({"role": "admin", "subject": "escalate"})),
        &token,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Bad requests say what to fix.
    for (body, code) in [
        (json!({"role": "admin", "subject": ""}), "invalid_subject"),
        (
            json!({"role": "admin", "subject": "x", "ttl_hours": 0}),
            "invalid_ttl",
        ),
        (json!({"role": "root", "subject": "x"}), "invalid_body"),
    ] {
        let (status, answer) = server.post("/tokens", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }

    // Revoked: refused on the very next request.
    let (status, body) = server.delete(&format!("/tokens/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = call(c.get(server.url("/clusters")), &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    let (_, list) = server.get("/tokens").await;
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .unwrap();
    assert_eq!(entry["state"], "revoked");
    let revoked_at = entry["revoked_at"].clone();
    assert!(revoked_at.is_string(), "{entry}");
    // Revoking again is fine and keeps the first time; unknown ids are 404.
    let (status, _) = server.delete(&format!("/tokens/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = server.get("/tokens").await;
    assert!(list.to_string().contains(revoked_at.as_str().unwrap()));
    for unknown in [uuid::Uuid::new_v4().to_string(), "not-an-id".to_string()] {
        let (status, body) = server.delete(&format!("/tokens/{unknown}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
    }

    // The audit trail names the token by id, never by value.
    let (status, audit) = server.get("/audit").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!audit.to_string().contains(&token));
    let actions: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["object_kind"] == "token" && e["status"].as_u64().unwrap() < 300)
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["object_name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("token.create".into(), id.clone()))
            && actions.contains(&("token.delete".into(), id.clone())),
        "{actions:?}"
    );
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    init_tracing();
    let server = TestServer::start().await;
    let keys = Keys::load_or_create(&server.data_dir).unwrap();
    let secret = {
        let file: Value = serde_json::from_slice(
            &std::fs::read(server.data_dir.join("server-key.json")).unwrap(),
        )
        .unwrap();
        file["secret"].as_str().unwrap().as_bytes().to_vec()
    };
    let sign = |secret: &[u8], claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let own = keys.verify(&server.token).unwrap();
    let iss = own.iss;
    // The id of a token the server issued and recorded.
    let recorded = own.jti;
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64| {
        json!({"sub": "x", "role": "admin", "iss": iss, "iat": now - 60, "exp": exp,
               "jti": recorded})
    };
    let with = |mut claims: Value, key: &str, value: Value| {
        claims[key] = value;
        claims
    };
    let other_dir = std::env::temp_dir().join(format!("pgshift-other-{}", uuid::Uuid::new_v4()));
    let foreign = Keys::load_or_create(&other_dir).unwrap();
    let good = server.token.clone();
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_claims = {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut c: Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
        c["sub"] = json!("someone-else");
        format!("{}.{}.{}", parts[0], engine.encode(c.to_string()), parts[2])
    };
    let cases = [
        ("expired", sign(&secret, claims(now - 3600))),
        (
            "wrong key",
            sign(b"not the server's secret at all", claims(now + 3600)),
        ),
        ("claims changed after signing", tampered_claims),
        (
            "alg none",
            format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]),
        ),
        (
            "another server's token",
            foreign.issue("x", Role::Admin, Duration::from_secs(60)),
        ),
        ("garbage", "abc.def.ghi".into()),
        (
            "not valid yet (nbf an hour ahead)",
            sign(&secret, with(claims(now + 7200), "nbf", json!(now + 3600))),
        ),
        (
            "an id the server never recorded",
            sign(
                &secret,
                with(
                    claims(now + 3600),
                    "jti",
                    json!(uuid::Uuid::new_v4().to_string()),
                ),
            ),
        ),
        (
            "an id that is no UUID",
            sign(&secret, with(claims(now + 3600), "jti", json!("x"))),
        ),
    ];
    for (what, token) in &cases {
        let (status, body) = call(server.client.get(server.url("/tokens")), token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
    }
    // The same signature with the server's own claims (a recorded id, `nbf` passed) still
    // works: the cases above are refused for what they are, not by accident.
    for good in [
        claims(now + 3600),
        with(claims(now + 3600), "nbf", json!(now - 10)),
    ] {
        let (status, body) = call(
            server.client.get(server.url("/tokens")),
            &sign(&secret, good),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    std::fs::remove_dir_all(other_dir).unwrap();
}

/// Runs `pgshift token …` in-process against the server's data directory.
async fn token_command(args: Vec<String>) -> (Exit, String, String) {
    tokio::task::spawn_blocking(move || {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: TokenCommand,
        }
        let cli = Cli::try_parse_from(std::iter::once("token".to_string()).chain(args))
            .expect("arguments parse");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = pgshift::cli_tokens::run(cli.command, &mut out, &mut err);
        (
            exit,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn token_commands_share_the_servers_store() {
    init_tracing();
    let server = TestServer::start().await;
    let dir = server.data_dir.display().to_string();

    let (exit, out, err) = token_command(vec![
        "create".into(),
        "--role".into(),
        "admin".into(),
        "--subject".into(),
        "release-bot".into(),
        "--data-dir".into(),
        dir.clone(),
    ])
    .await;
    assert_eq!(exit, Exit::Ok, "{err}");
    let token = out.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{out}");
    let (status, list) = call(server.client.get(server.url("/tokens")), &token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["subject"] == "release-bot")
        .unwrap_or_else(|| panic!("{list}"))["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (exit, out, _) = token_command(vec!["list".into(), "--data-dir".into(), dir.clone()]).await;
    assert_eq!(exit, Exit::Ok);
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("SUBJECT"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("release-bot") && line.contains("admin") && line.contains("active"));
    assert!(!out.contains(&token));
    let (exit, out, _) = token_command(vec![
        "list".into(),
        "--json".into(),
        "--data-dir".into(),
        dir.clone(),
    ])
    .await;
    assert_eq!(exit, Exit::Ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == id.as_str()));

    let (exit, _, err) = token_command(vec![
        "revoke".into(),
        id.clone(),
        "--data-dir".into(),
        dir.clone(),
    ])
    .await;
    assert_eq!(exit, Exit::Ok, "{err}");
    let (status, _) = call(server.client.get(server.url("/clusters")), &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (exit, _, err) = token_command(vec![
        "revoke".into(),
        uuid::Uuid::new_v4().to_string(),
        "--data-dir".into(),
        dir,
    ])
    .await;
    assert_eq!(exit, Exit::NotFound);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not found"), "{err}");
}

/// Builds and runs a server on a PostgreSQL metadata store.
async fn serve(
    data_dir: PathBuf,
    metadata: String,
) -> (
    String,
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), data_dir);
    config.metadata = Some(metadata);
    config.engine = test_settings();
    let app = Application::build(config).await.expect("pgshift builds");
    let base = format!("http://{}/api/v1", app.local_addr());
    let token = app
        .issue_token(Role::Admin, Duration::from_secs(3600))
        .await
        .expect("a token for the tests");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = rx.await;
        })
        .await
        .expect("server runs");
    });
    (base, token, tx, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_holds_at_once_on_every_instance() {
    init_tracing();
    let pg = PgCluster::start().await;
    pg.create_database("meta").await;
    // Two instances on one metadata store, with the same signing key (one data directory).
    let dir = std::env::temp_dir().join(format!("pgshift-tokens-{}", uuid::Uuid::new_v4()));
    let (a, admin, stop_a, handle_a) = serve(dir.clone(), pg.dsn("meta")).await;
    let (b, _, stop_b, handle_b) = serve(dir.clone(), pg.dsn("meta")).await;
    let c = reqwest::Client::new();

    let (status, issued) = call(
        c.post(format!("{a}/tokens"))
            .json(&json!({"role": "viewer", "subject": "dashboard"})),
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let token = issued["token"].as_str().unwrap();
    let id = issued["id"].as_str().unwrap();
    // Warm both instances up with the token, then revoke it on A: B refuses the next request.
    for base in [&a, &b] {
        let (status, _) = call(c.get(format!("{base}/migrations")), token).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = call(c.delete(format!("{a}/tokens/{id}")), &admin).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for base in [&b, &a] {
        let (status, body) = call(c.get(format!("{base}/migrations")), token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{base}: {body}");
    }
    // B lists what A issued.
    let (_, list) = call(c.get(format!("{b}/tokens")), &admin).await;
    assert!(list.to_string().contains(id), "{list}");

    let _ = stop_a.send(());
    let _ = stop_b.send(());
    handle_a.await.unwrap();
    handle_b.await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
