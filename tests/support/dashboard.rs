//! Helpers for dashboard tests: users written straight into a test server's metadata store, and
//! a cookie-keeping HTTP client that reads CSRF tokens out of pages.

use std::path::Path;

use pgshift::auth::Role;
use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

/// Adds a dashboard user to the SQLite store in `data_dir` (as `pgshift user create` does).
pub async fn create_user(data_dir: &Path, name: &str, role: Role, password: &str) {
    let store = pgshift::store::open(None, data_dir)
        .await
        .expect("the test server's store opens");
    pgshift::service::users::create(store.as_ref(), name, role, password)
        .await
        .unwrap_or_else(|e| panic!("creating user {name}: {e}"));
}

/// One response, read whole.
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the first `name="csrf"` hidden field.
    pub fn csrf(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no CSRF field in the page:\n{}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').expect("closing quote") + start;
        self.body[start..end].to_string()
    }
}

/// A browser-like client for `/ui`: keeps the session cookie, never follows redirects.
pub struct UiClient {
    pub base: String,
    client: reqwest::Client,
    pub cookie: Option<String>,
}

impl UiClient {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_string(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn read(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header(COOKIE, format!("pgshift_session={c}")),
            None => req,
        };
        let resp = req.send().await.expect("request reaches the server");
        let status = resp.status();
        let headers = resp.headers().clone();
        for value in headers.get_all(SET_COOKIE) {
            let value = value.to_str().unwrap();
            if let Some(rest) = value.strip_prefix("pgshift_session=") {
                let v = rest.split(';').next().unwrap();
                self.cookie = (!v.is_empty()).then(|| v.to_string());
            }
        }
        let body = resp.text().await.unwrap_or_default();
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let req = self.client.get(format!("{}{path}", self.base));
        self.read(req).await
    }

    pub async fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> Page {
        let mut req = self.client.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.read(req).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.client.post(format!("{}{path}", self.base)).form(form);
        self.read(req).await
    }

    pub async fn post_with(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut req = self.client.post(format!("{}{path}", self.base)).form(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.read(req).await
    }

    /// Signs in, panicking unless it works.
    pub async fn sign_in(&mut self, name: &str, password: &str) {
        let page = self
            .post(
                "/ui/sign-in",
                &[("name", name), ("password", password), ("next", "/ui")],
            )
            .await;
        assert_eq!(
            page.status,
            StatusCode::SEE_OTHER,
            "signing in {name}: {}",
            page.body
        );
        assert!(self.cookie.is_some(), "no session cookie for {name}");
    }

    /// The CSRF token of a page this session can see.
    pub async fn csrf(&mut self) -> String {
        let page = self.get("/ui").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        page.csrf()
    }
}
