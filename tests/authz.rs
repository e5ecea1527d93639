//! Authorization matrix: every API route × every role, and missing, expired, revoked, forged and
//! unsigned tokens.

use std::time::Duration;

use pgshift::auth::{Keys, Role};
use pgshift_tests::init_tracing;
use pgshift_tests::server::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Every route under /api/v1 with the least role that may use it.
const ROUTES: &[(&str, &str, Role)] = &[
    ("GET", "/clusters", Role::Viewer),
    ("POST", "/clusters", Role::Admin),
    ("GET", "/clusters/c", Role::Viewer),
    ("DELETE", "/clusters/c", Role::Admin),
    ("GET", "/migrations", Role::Viewer),
    ("POST", "/migrations", Role::Admin),
    ("GET", "/migrations/m", Role::Viewer),
    ("DELETE", "/migrations/m", Role::Admin),
    ("POST", "/migrations/m/start", Role::Operator),
    ("POST", "/migrations/m/pause", Role::Operator),
    ("POST", "/migrations/m/resume", Role::Operator),
    ("GET", "/tokens", Role::Admin),
    ("POST", "/tokens", Role::Admin),
    ("DELETE", "/tokens/t", Role::Admin),
];

fn secret(server: &TestServer) -> Vec<u8> {
    let file: Value =
        serde_json::from_slice(&std::fs::read(server.data_dir.join("server-key.json")).unwrap())
            .unwrap();
    file["secret"].as_str().unwrap().as_bytes().to_vec()
}

fn token_with(secret: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// An admin token issued through the API, then revoked.
async fn revoked_token(server: &TestServer) -> String {
    let (status, issued) = server
        .post("/tokens", json!({"role": "admin", "subject": "revoked"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let id = issued["id"].as_str().unwrap();
    let (status, body) = server.delete(&format!("/tokens/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    issued["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_route_by_every_role_and_bad_token() {
    init_tracing();
    let server = TestServer::start().await;
    let keys = Keys::load_or_create(&server.data_dir).unwrap();
    let other = std::env::temp_dir().join(format!("pgshift-other-{}", uuid::Uuid::new_v4()));
    let foreign = Keys::load_or_create(&other).unwrap();
    let now = chrono::Utc::now().timestamp();
    let iss = keys.verify(&server.token).unwrap().iss;
    let expired = token_with(
        &secret(&server),
        json!({"sub": "ci", "role": "admin", "iss": iss, "iat": now - 7200, "exp": now - 3600, "jti": "x"}),
    );
    let unsigned = {
        let claims = server.token.split('.').nth(1).unwrap().to_string();
        format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.")
    };
    let refused: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("expired", Some(expired)),
        (
            "signed by another server",
            Some(foreign.issue("ci", Role::Admin, Duration::from_secs(60))),
        ),
        ("alg none", Some(unsigned)),
        ("revoked", Some(revoked_token(&server).await)),
    ];
    let body = json!({"name": "c", "dsn": "not a dsn"});
    let mut role_tokens = std::collections::BTreeMap::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        role_tokens.insert(role, server.token_for(role, "matrix").await);
    }
    for (method, path, least) in ROUTES {
        for (what, token) in &refused {
            let mut req = server
                .client
                .request(method.parse().unwrap(), server.url(path))
                .json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let status = req.send().await.unwrap().status();
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {what}"
            );
        }
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            let token = &role_tokens[&role];
            let resp = server
                .client
                .request(method.parse().unwrap(), server.url(path))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let answer: Value = resp.json().await.unwrap_or(Value::Null);
            if role < *least {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} as {role}: {answer}"
                );
                let message = answer["error"]["message"].as_str().unwrap();
                assert!(message.contains(&least.to_string()), "{message}");
            } else {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{method} {path} as {role} was refused: {status} {answer}"
                );
            }
        }
    }
    std::fs::remove_dir_all(other).unwrap();
}
