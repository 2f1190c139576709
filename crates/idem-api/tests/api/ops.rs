//! Health, readiness, metrics, the OpenAPI document and the Swagger UI.

use std::sync::Arc;

use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;

use crate::common::{assert_problem, registry, spawn_app, spawn_app_with, FixedProbe};

#[tokio::test]
async fn health_and_liveness_answer_200() {
    let app = spawn_app().await;
    let (status, _, body) = app.get("/health").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _, body) = app.get("/health/live").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "alive"})));
}

#[tokio::test]
async fn readiness_is_200_when_the_store_and_every_probe_answer() {
    let app = spawn_app_with(|s| s.probes.push(Arc::new(FixedProbe("broker", Ok(()))))).await;
    let (status, _, body) = app.get("/health/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"store": "ok", "broker": "ok"}})
    );
}

#[tokio::test]
async fn readiness_is_503_naming_the_failing_component() {
    let app = spawn_app_with(|s| {
        s.probes.push(Arc::new(FixedProbe("broker", Ok(()))));
        s.probes.push(Arc::new(FixedProbe(
            "redis",
            Err("connection refused".into()),
        )));
    })
    .await;
    let (status, _, problem) = app.get("/health/ready").await;
    assert_problem(status, &problem, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        problem["detail"].as_str().unwrap().contains("redis"),
        "{problem}"
    );
    assert!(
        !problem["detail"].as_str().unwrap().contains("broker"),
        "{problem}"
    );
    assert_eq!(problem["checks"]["redis"], "connection refused");
    assert_eq!(problem["checks"]["store"], "ok");
}

#[tokio::test]
async fn metrics_are_404_without_a_recorder() {
    let app = spawn_app().await;
    let (status, _, problem) = app.get("/metrics").await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_export_submissions_http_requests_and_queue_depth() {
    // The only test that installs the process-wide recorder.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("first recorder");
    // Other tests record into the same recorder while this one runs: this one's task and queue
    // names are its own.
    let mut registry = registry();
    registry.register("metered", |_ctx, _args: serde_json::Value| async {
        Ok::<_, idem_core::TaskError>(())
    });
    let app = spawn_app_with(|s| {
        s.metrics = Some(handle);
        s.registry = Arc::new(registry);
    })
    .await;
    let body = json!({"task": "metered", "queue": "metered-q", "idempotency_key": "m1"});
    app.post("/api/v1/tasks/submit", body.clone()).await;
    app.post("/api/v1/tasks/submit", body).await;

    let (status, headers, text) = app.raw("GET", "/metrics", None, Vec::new(), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("content-type").unwrap(),
        "text/plain; version=0.0.4"
    );
    let text = String::from_utf8(text).unwrap();
    for needle in [
        "idem_submissions_total{task=\"metered\"} 1",
        "idem_submission_replays_total{task=\"metered\"} 1",
        "idem_http_requests_total{method=\"POST\",route=\"/api/v1/tasks/submit\",status=\"202\"}",
        "idem_http_request_duration_seconds",
        "idem_queue_depth{queue=\"metered-q\",state=\"queued\"} 1",
        "idem_queue_depth{queue=\"metered-q\",state=\"running\"} 0",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let app = spawn_app().await;
    let (status, _, doc) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/pause",
        "/api/v1/jobs/{id}/resume",
        "/api/v1/jobs/{id}/run",
        "/api/v1/jobs/{id}/runs",
        "/api/v1/tasks",
        "/api/v1/tasks/submit",
        "/api/v1/tasks/submit/batch",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/{id}/result",
        "/api/v1/tasks/{id}/cancel",
        "/api/v1/workers",
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    assert_eq!(doc, serde_json::to_value(idem_api::openapi()).unwrap());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn the_docs_are_served_from_the_binary() {
    let app = spawn_app().await;
    let (status, headers, _) = app.raw("GET", "/docs", None, Vec::new(), &[]).await;
    assert!(
        status.is_redirection() || status == StatusCode::OK,
        "{status}"
    );
    if status.is_redirection() {
        assert_eq!(headers.get("location").unwrap(), "/docs/");
    }
    let (status, _, html) = app.raw("GET", "/docs/", None, Vec::new(), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let html = String::from_utf8(html).unwrap();
    assert!(html.to_lowercase().contains("<html"), "{html}");
}

#[tokio::test]
async fn workers_are_listed() {
    let app = spawn_app().await;
    let (status, _, body) = app.get("/api/v1/workers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"items": []}));
}

/// A probe that never answers.
struct HangingProbe;

impl idem_api::Probe for HangingProbe {
    fn name(&self) -> &'static str {
        "broker"
    }
    fn check(&self) -> idem_api::BoxFuture<'_, Result<(), String>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_dependency_that_does_not_answer_fails_readiness_after_the_timeout() {
    let app = spawn_app_with(|s| s.probes.push(Arc::new(HangingProbe))).await;
    let start = std::time::Instant::now();
    let (status, _, problem) = app.get("/health/ready").await;
    assert_problem(status, &problem, StatusCode::SERVICE_UNAVAILABLE);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert!(
        problem["checks"]["broker"]
            .as_str()
            .unwrap()
            .starts_with("no answer"),
        "{problem}"
    );
}

#[tokio::test]
async fn a_request_the_store_does_not_answer_is_a_503_within_the_request_timeout() {
    use idem_testkit::faulty::{FaultyStore, Link};
    let link = std::sync::Mutex::new(None);
    let app = spawn_app_with(|s| {
        let faulty = FaultyStore::new(s.store.clone());
        *link.lock().unwrap() = Some(faulty.clone());
        s.store = faulty;
        s.request_timeout = std::time::Duration::from_millis(200);
    })
    .await;
    link.lock().unwrap().as_ref().unwrap().set(Link::BlackHole);
    let (status, _, problem) = app
        .post("/api/v1/tasks/submit", json!({"task": "noop"}))
        .await;
    assert_problem(status, &problem, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("did not finish"),
        "{problem}"
    );
    let (status, _, _) = app.get("/api/v1/jobs").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_dependency_watch_reports_each_dependency_with_the_readiness_checks() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("deps.db").display());
    let store = Arc::new(idem_sql::SqliteStore::open(&url).await.unwrap());
    let watch = idem_api::DependencyWatch::new(
        store,
        vec![
            Arc::new(FixedProbe("broker", Ok(()))),
            Arc::new(FixedProbe("redis", Err("connection refused".into()))),
        ],
    );
    let up = watch.run_once().await;
    assert_eq!(
        up.into_iter().collect::<Vec<_>>(),
        vec![("broker", true), ("redis", false), ("store", true)]
    );
}
