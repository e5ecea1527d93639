//! Command-line layer (the API client): the client's side of the REST API: one request, its JSON
//! answer, or a typed failure that knows its exit code.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::exit::Exit;

/// How long one request may take: creating a migration checks both databases.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a request did not give an answer the command can use.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    /// The server answered with an error (`{"error":{"code","message"}}`).
    #[error("{message} ({code}, HTTP {})", status.as_u16())]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("cannot reach the pgshift server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{0}")]
    Timeout(String),
    /// A verification found tables that differ.
    #[error("{0}")]
    Differences(String),
    /// A cutover or verification ended failed or aborted.
    #[error("{0}")]
    OperationFailed(String),
}

impl ClientError {
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Usage(_) => Exit::Usage,
            ClientError::Api { status, .. } if *status == StatusCode::NOT_FOUND => Exit::NotFound,
            ClientError::Api { .. } => Exit::Api,
            ClientError::Unreachable { .. } => Exit::Unreachable,
            ClientError::Timeout(_) => Exit::Timeout,
            ClientError::Differences(_) => Exit::Differences,
            ClientError::OperationFailed(_) => Exit::OperationFailed,
        }
    }

    /// Worth asking again (the server restarting, or briefly failing), as `migration wait` does.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

/// A pgshift server and the token to call it with.
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let token = token.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            ClientError::Usage(
                "no token: set PGSHIFT_TOKEN or pass --token (pgshift token create makes one)"
                    .into(),
            )
        })?;
        let base = url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Usage(format!(
                "the server URL {url:?} must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot set up HTTP: {e}")))?;
        Ok(Self {
            base: base.to_string(),
            token: token.trim().to_string(),
            http,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::DELETE, path, None).await
    }

    /// Sends one request to `/api/v1{path}`; a 2xx answer's JSON (`null` when empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: self.base.clone(),
            reason: error_chain(&e),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return Ok(value.unwrap_or(Value::Null));
        }
        let error = value.as_ref().map(|v| &v["error"]);
        let field = |name: &str| error.and_then(|e| e[name].as_str()).map(str::to_string);
        Err(ClientError::Api {
            status,
            code: field("code").unwrap_or_else(|| "http_error".into()),
            message: field("message").unwrap_or_else(|| {
                format!(
                    "the server answered {status} without a pgshift error body (is {} a pgshift server?)",
                    self.base
                )
            }),
        })
    }
}

/// The error and its causes on one line ("connection refused" is usually a cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
