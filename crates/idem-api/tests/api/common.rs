//! The per-test app: a router over a fresh SQLite file, and request helpers.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use idem_api::{AppState, Probe};
use idem_core::{Registry, TaskError};
use idem_sql::SqliteStore;
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

pub struct App {
    pub router: Router,
    pub store: Arc<SqliteStore>,
    /// Keeps the database directory alive for the test's duration.
    _dir: TempDir,
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register("noop", |_ctx, _args: Value| async {
        Ok::<_, TaskError>(Value::Null)
    });
    r.register("echo", |_ctx, args: Value| async move {
        Ok::<_, TaskError>(args)
    });
    r
}

/// A fresh store and router; `configure` adjusts the state (metrics handle, probes, body limit).
pub async fn spawn_app_with(configure: impl FnOnce(&mut AppState)) -> App {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = Arc::new(SqliteStore::open(&url).await.expect("open store"));
    let mut state = AppState::new(store.clone(), Arc::new(registry()));
    configure(&mut state);
    App {
        router: idem_api::router(state),
        store,
        _dir: dir,
    }
}

pub async fn spawn_app() -> App {
    spawn_app_with(|_| {}).await
}

/// A readiness probe with a fixed answer.
pub struct FixedProbe(pub &'static str, pub Result<(), String>);

impl Probe for FixedProbe {
    fn name(&self) -> &'static str {
        self.0
    }
    fn check(&self) -> idem_api::BoxFuture<'_, Result<(), String>> {
        let answer = self.1.clone();
        Box::pin(async move { answer })
    }
}

impl App {
    /// Sends a request with raw bytes and returns the status, headers and body bytes.
    pub async fn raw(
        &self,
        method: &str,
        uri: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::from(body)).expect("request");
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        // every error of the API is a problem, whatever the route.
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                headers.get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/problem+json"),
                "{method} {uri} answered {status} without a problem body"
            );
        }
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (status, headers, bytes.to_vec())
    }

    /// Sends `body` as JSON (when given) and parses the answer as JSON (`null` when empty).
    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let (ct, bytes) = match body {
            Some(b) => (Some("application/json"), serde_json::to_vec(&b).unwrap()),
            None => (None, Vec::new()),
        };
        let (status, headers, bytes) = self.raw(method, uri, ct, bytes, headers).await;
        (status, headers, json_of(&bytes))
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, HeaderMap, Value) {
        self.send("GET", uri, None, &[]).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
        self.send("POST", uri, Some(body), &[]).await
    }

    pub async fn post_empty(&self, uri: &str) -> (StatusCode, HeaderMap, Value) {
        self.send("POST", uri, None, &[]).await
    }

    pub async fn patch(&self, uri: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
        self.send("PATCH", uri, Some(body), &[]).await
    }
}

/// The body as JSON; an empty body is `null`, anything unparsable its text as a string.
pub fn json_of(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The fields named by a 422's `errors`, in order.
pub fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts an RFC 9457 problem with the expected status (every request helper already checks that
/// an error answer is `application/problem+json`).
pub fn assert_problem(status: StatusCode, problem: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{problem}");
    assert_eq!(problem["status"], expected.as_u16(), "{problem}");
    for key in ["type", "title", "detail"] {
        assert!(problem[key].is_string(), "{key} missing in {problem}");
    }
}
