//! The OpenAPI document at /api/v1/openapi.json: it parses, is OpenAPI 3, every `$ref` resolves,
//! and it lists exactly the routes and methods the router serves. The routes are read from the
//! router itself (its paths) and from the server (each path's `Allow` header), so a route added
//! without an annotation fails here.

use std::collections::{BTreeMap, BTreeSet};

use pgshift::app::Application;
use pgshift::config::ServeConfig;
use pgshift_tests::init_tracing;
use pgshift_tests::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The paths in the router's debug output (`RouteId(n): "/path"`): axum has no public way to
/// list its routes. Paths of axum's own internal routes (nesting, fallbacks) are left out.
fn router_paths(router: &dyn std::fmt::Debug) -> BTreeSet<String> {
    let text = format!("{router:?}");
    let mut paths = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("RouteId(") {
        rest = &rest[at + "RouteId(".len()..];
        let Some(close) = rest.find(')') else { break };
        let after = &rest[close + 1..];
        if let Some(quoted) = after.strip_prefix(": \"") {
            if let Some(end) = quoted.find('"') {
                let path = &quoted[..end];
                if !path.contains("__private__axum") {
                    paths.insert(path.to_string());
                }
            }
        }
    }
    paths
}

/// The methods `path` answers, from the `Allow` header of a 405 to a method no route uses;
/// `None` for a 404: the paths axum registers for fallbacks (`/`, `/api/v1`) serve nothing.
async fn served_methods(server: &TestServer, path: &str) -> Option<BTreeSet<String>> {
    let concrete: String = path
        .split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect::<Vec<_>>()
        .join("/");
    let resp = server
        .client
        .request(Method::TRACE, format!("{}{concrete}", server.base))
        .send()
        .await
        .unwrap();
    if resp.status() == StatusCode::NOT_FOUND {
        return None;
    }
    assert_eq!(
        resp.status(),
        StatusCode::METHOD_NOT_ALLOWED,
        "TRACE {concrete}"
    );
    let allow = resp.headers()["allow"].to_str().unwrap().to_string();
    let methods = allow
        .split(',')
        .map(|m| m.trim().to_ascii_lowercase())
        .filter(|m| !m.is_empty() && m != "head")
        .collect();
    Some(methods)
}

fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

fn refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref" {
                    found.push(v.as_str().unwrap().to_string());
                } else {
                    refs(v, found);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_describes_every_route() {
    init_tracing();
    let server = TestServer::start().await;
    // Served without a token: it holds no data.
    let resp = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.expect("the document is JSON");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "pgshift");
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for reference in &found {
        assert!(
            resolve(&doc, reference).is_some(),
            "{reference} does not resolve"
        );
    }

    let documented: BTreeMap<String, BTreeSet<String>> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect();

    let dir = std::env::temp_dir().join(format!("pgshift-openapi-{}", uuid::Uuid::new_v4()));
    let app = Application::build(ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.clone(),
    ))
    .await
    .unwrap();
    let paths = router_paths(&app.router());
    drop(app);
    let _ = std::fs::remove_dir_all(dir);
    // The debug output is read as it should be (else this test would check nothing).
    for known in [
        "/api/v1/clusters",
        "/api/v1/migrations/{name}/start",
        "/healthz",
    ] {
        assert!(paths.contains(known), "{known} not among {paths:?}");
    }

    // Every route served under /api/v1 (and the operations routes) with each of its methods is
    // in the document: a route added without an annotation fails here.
    let mut routes = BTreeSet::new();
    for path in &paths {
        let Some(served) = served_methods(&server, path).await else {
            continue;
        };
        routes.insert(path.clone());
        let in_doc = documented.get(path);
        let api = path.starts_with("/api/v1/");
        if api || in_doc.is_some() {
            let in_doc = in_doc.unwrap_or_else(|| panic!("{path} is served but not documented"));
            assert_eq!(&served, in_doc, "methods of {path}: served vs documented");
        }
    }
    // And the document describes nothing the router does not serve.
    for path in documented.keys() {
        assert!(routes.contains(path), "{path} is documented but not served");
    }

    // Every operation has a unique id (client generators need one), says who may call it and
    // how it fails, and describes every response.
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(
                operation_ids.insert(id.clone()),
                "{method} {path}: operationId {id:?} is missing or taken"
            );
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                assert!(
                    !response["description"]
                        .as_str()
                        .unwrap_or_default()
                        .is_empty(),
                    "{method} {path}: response {status} has no description"
                );
            }
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} has no success response"
            );
            if path.starts_with("/api/v1/") && path != "/api/v1/openapi.json" {
                assert!(
                    op["security"].is_array(),
                    "{method} {path} does not declare bearer auth"
                );
                assert!(
                    responses.contains_key("401"),
                    "{method} {path} does not document 401"
                );
            }
            if path.contains('{') {
                assert!(
                    responses.contains_key("404"),
                    "{method} {path} does not document 404"
                );
            }
            if method == "post" && op.get("requestBody").is_some() {
                assert!(
                    responses.contains_key("422"),
                    "{method} {path} takes a body but does not document 422"
                );
            }
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}
