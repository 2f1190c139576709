//! The `http` task against a local axum server on 127.0.0.1:0, called through the registry.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use idem_core::TaskError;
use serde_json::{json, Value};

use crate::test_support::{
    assert_gives_up, assert_retries, call, ctx, ctx_with_key, registry as builtins,
};
use crate::BuiltinConfig;

fn allow_private() -> BuiltinConfig {
    BuiltinConfig {
        http_allow_private: true,
        ..BuiltinConfig::default()
    }
}

fn guarded() -> BuiltinConfig {
    BuiltinConfig::default()
}

/// Starts the test server and returns its address.
async fn spawn_server() -> SocketAddr {
    let app = Router::new()
        .route("/echo", any(echo))
        .route("/status/{code}", any(status))
        .route("/retry-after/{code}", any(status_with_retry_after))
        .route("/text", get(|| async { "plain words" }))
        .route("/big", get(|| async { "x".repeat(100_000) }))
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [("location", "/echo")]) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Answers with what it received, so tests can check what the task sent.
async fn echo(method: Method, headers: HeaderMap, body: String) -> Json<Value> {
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    Json(json!({
        "method": method.as_str(),
        "idempotency_key": header("idempotency-key"),
        "task_id": header("idem-task-id"),
        "attempt": header("idem-attempt"),
        "content_type": header("content-type"),
        "custom": header("x-custom"),
        "body": body,
    }))
}

async fn status(Path(code): Path<u16>) -> Response {
    (StatusCode::from_u16(code).unwrap(), "no luck").into_response()
}

async fn status_with_retry_after(Path(code): Path<u16>) -> Response {
    let code = StatusCode::from_u16(code).unwrap();
    (code, [("retry-after", "7")], "slow down").into_response()
}

#[tokio::test]
async fn http_returns_status_and_json_body_and_sends_the_idempotency_headers() {
    let addr = spawn_server().await;
    let registry = builtins(allow_private());
    let ctx = ctx_with_key(3, "order-42");
    let task_id = ctx.task_id.to_string();
    let args = json!({
        "url": format!("http://{addr}/echo"),
        "headers": {"X-Custom": "yes"},
        "body": {"amount": 5},
    });
    let out = call(&registry, "http", ctx, args).await.unwrap();
    assert_eq!(out["status"], 200);
    let seen = &out["body"];
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["idempotency_key"], "order-42");
    assert_eq!(seen["task_id"], task_id);
    assert_eq!(seen["attempt"], "3");
    assert_eq!(seen["custom"], "yes");
    assert_eq!(seen["content_type"], "application/json");
    assert_eq!(seen["body"], r#"{"amount":5}"#);
}

#[tokio::test]
async fn http_uses_the_task_id_as_idempotency_key_when_the_task_has_none() {
    let addr = spawn_server().await;
    let registry = builtins(allow_private());
    let ctx = ctx(1);
    let task_id = ctx.task_id.to_string();
    let args = json!({"url": format!("http://{addr}/echo"), "method": "get"});
    let out = call(&registry, "http", ctx, args).await.unwrap();
    assert_eq!(out["body"]["method"], "GET");
    assert_eq!(out["body"]["idempotency_key"], task_id);
}

#[tokio::test]
async fn http_idempotency_headers_cannot_be_overridden_by_the_arguments() {
    let addr = spawn_server().await;
    let registry = builtins(allow_private());
    let args = json!({
        "url": format!("http://{addr}/echo"),
        "headers": {"Idempotency-Key": "forged", "Idem-Attempt": "99"},
    });
    let out = call(&registry, "http", ctx_with_key(2, "real"), args)
        .await
        .unwrap();
    assert_eq!(out["body"]["idempotency_key"], "real");
    assert_eq!(out["body"]["attempt"], "2");
}

#[tokio::test]
async fn http_sends_a_string_body_as_text() {
    let addr = spawn_server().await;
    let registry = builtins(allow_private());
    let args = json!({"url": format!("http://{addr}/echo"), "body": "hello"});
    let out = call(&registry, "http", ctx(1), args).await.unwrap();
    assert_eq!(out["body"]["body"], "hello");
    assert_eq!(out["body"]["content_type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn http_returns_non_json_bodies_as_text_truncated_to_64_kib() {
    let addr = spawn_server().await;
    let registry = builtins(allow_private());
    let text = json!({"url": format!("http://{addr}/text"), "method": "GET"});
    let out = call(&registry, "http", ctx(1), text).await.unwrap();
    assert_eq!(out, json!({"status": 200, "body": "plain words"}));

    let big = json!({"url": format!("http://{addr}/big"), "method": "GET"});
    let out = call(&registry, "http", ctx(1), big).await.unwrap();
    assert_eq!(out["body"].as_str().unwrap().len(), 64 * 1024);
}

#[tokio::test]
async fn http_returns_redirects_without_following_them() {
    let addr = spawn_server().await;
    let registry = builtins(allow_private());
    let args = json!({"url": format!("http://{addr}/redirect"), "method": "GET"});
    let out = call(&registry, "http", ctx(1), args).await.unwrap();
    assert_eq!(out["status"], 302);
}

#[tokio::test]
async fn http_retries_server_errors_timeouts_and_rate_limits() {
    let addr = spawn_server().await;
    let registry = builtins(allow_private());
    for code in [500, 502, 503, 408, 429] {
        let args = json!({"url": format!("http://{addr}/status/{code}")});
        let err = call(&registry, "http", ctx(1), args).await.unwrap_err();
        assert_retries(&err, "http_status");
        assert!(
            err.info().message.starts_with(&format!("HTTP {code}")),
            "{err:?}"
        );
        assert!(err.info().message.contains("no luck"), "{err:?}");
    }
}

#[tokio::test]
async fn http_honours_retry_after_seconds_on_429_and_503() {
    let addr = spawn_server().await;
    let registry = builtins(allow_private());
    for code in [429, 503] {
        let args = json!({"url": format!("http://{addr}/retry-after/{code}")});
        match call(&registry, "http", ctx(1), args).await.unwrap_err() {
            TaskError::RetryAfter { after, error } => {
                assert_eq!(after, Duration::from_secs(7));
                assert_eq!(error.kind, "http_status");
            }
            other => panic!("expected RetryAfter for {code}, got {other:?}"),
        }
    }
    // Elsewhere Retry-After is not a promise: a 500 with one still takes the standard backoff.
    let args = json!({"url": format!("http://{addr}/retry-after/500")});
    let err = call(&registry, "http", ctx(1), args).await.unwrap_err();
    assert_retries(&err, "http_status");
}

#[tokio::test]
async fn http_gives_up_on_other_client_errors() {
    let addr = spawn_server().await;
    let registry = builtins(allow_private());
    for code in [400, 401, 403, 404, 422] {
        let args = json!({"url": format!("http://{addr}/status/{code}")});
        let err = call(&registry, "http", ctx(1), args).await.unwrap_err();
        assert_gives_up(&err, "http_status");
    }
}

#[tokio::test]
async fn http_retries_when_the_connection_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let registry = builtins(allow_private());
    let args = json!({"url": format!("http://{addr}/")});
    let err = call(&registry, "http", ctx(1), args).await.unwrap_err();
    assert_retries(&err, "connection");
}

#[tokio::test]
async fn http_retries_when_the_request_times_out() {
    let addr = spawn_server().await;
    let registry = builtins(allow_private());
    let args =
        json!({"url": format!("http://{addr}/slow"), "method": "GET", "timeout_seconds": 0.2});
    let err = call(&registry, "http", ctx(1), args).await.unwrap_err();
    assert_retries(&err, "timeout");
}

#[tokio::test]
async fn http_refuses_internal_addresses_unless_private_is_allowed() {
    let addr = spawn_server().await;
    let registry = builtins(guarded());
    for url in [
        format!("http://{addr}/echo"),
        format!("http://localhost:{}/echo", addr.port()), // refused after resolution
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[::1]/".to_owned(),
        "http://[::ffff:127.0.0.1]/".to_owned(),
        "http://metadata.google.internal/".to_owned(),
    ] {
        let err = call(&registry, "http", ctx(1), json!({"url": url}))
            .await
            .unwrap_err();
        assert_gives_up(&err, "refused_address");
        assert!(
            err.info().message.contains("IDEM_HTTP_ALLOW_PRIVATE"),
            "{err:?}"
        );
    }
    // The same server is reachable, by literal and by name, once private addresses are allowed.
    let open = builtins(allow_private());
    for url in [
        format!("http://{addr}/echo"),
        format!("http://localhost:{}/echo", addr.port()),
    ] {
        let out = call(&open, "http", ctx(1), json!({"url": url}))
            .await
            .unwrap();
        assert_eq!(out["status"], 200);
    }
}

#[tokio::test]
async fn http_refuses_bad_arguments() {
    let registry = builtins(allow_private());
    for args in [
        json!({"url": "ftp://example.com/file"}),
        json!({"url": "file:///etc/passwd"}),
        json!({"url": "not a url"}),
        json!({"url": "http://example.com/", "method": "NOT A METHOD"}),
        json!({"url": "http://example.com/", "timeout_seconds": 0}),
        json!({"url": "http://example.com/", "timeout_seconds": -1}),
        json!({"url": "http://example.com/", "headers": {"bad header": "x"}}),
        json!({"url": "http://example.com/", "headers": {"x": "line\nbreak"}}),
        json!({"url": "http://example.com/", "header": {}}),
        json!({}),
    ] {
        let err = call(&registry, "http", ctx(1), args.clone())
            .await
            .unwrap_err();
        assert_gives_up(&err, "bad_args");
    }
}
