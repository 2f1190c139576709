//! every bad request is answered with its status as `application/problem+json` (the
//! request helpers assert the content type of every error answer).

use axum::http::StatusCode;
use serde_json::json;

use crate::common::{assert_problem, json_of, spawn_app, spawn_app_with};

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = spawn_app().await;
    for body in [
        &b"{\"task\": "[..],
        b"not json",
        b"{\"a\":1}}",
        b"",
        b"  \n",
    ] {
        let (status, _, bytes) = app
            .raw("POST", "/api/v1/tasks/submit", JSON, body.to_vec(), &[])
            .await;
        assert_problem(status, &json_of(&bytes), StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn a_body_that_is_not_declared_as_json_is_a_415() {
    let app = spawn_app().await;
    let body = br#"{"task":"noop"}"#.to_vec();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let (status, _, bytes) = app
            .raw("POST", "/api/v1/tasks/submit", ct, body.clone(), &[])
            .await;
        assert_problem(status, &json_of(&bytes), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    let (status, _, bytes) = app
        .raw(
            "POST",
            "/api/v1/tasks/submit",
            Some("application/json; charset=utf-8"),
            body,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", json_of(&bytes));
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_problem() {
    let app = spawn_app().await;
    let big = format!(
        r#"{{"task":"noop","args":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    for uri in [
        "/api/v1/tasks/submit",
        "/api/v1/jobs",
        "/api/v1/tasks/submit/batch",
    ] {
        let (status, _, bytes) = app
            .raw("POST", uri, JSON, big.clone().into_bytes(), &[])
            .await;
        assert_problem(status, &json_of(&bytes), StatusCode::PAYLOAD_TOO_LARGE);
    }

    let small = spawn_app_with(|s| s.max_body_bytes = 64).await;
    let body = json!({"task": "noop", "args": "y".repeat(100)}).to_string();
    let (status, _, bytes) = small
        .raw("POST", "/api/v1/tasks/submit", JSON, body.into_bytes(), &[])
        .await;
    let problem = json_of(&bytes);
    assert_problem(status, &problem, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        problem["detail"].as_str().unwrap().contains("64"),
        "{problem}"
    );
}

#[tokio::test]
async fn unknown_tasks_are_a_422_naming_the_task_field() {
    let app = spawn_app().await;
    let (status, _, problem) = app
        .post("/api/v1/tasks/submit", json!({"task": "launch-missiles"}))
        .await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "task");
    assert_eq!(problem["type"], "https://idem.dev/problems/validation");
}

#[tokio::test]
async fn bad_job_ids_priorities_and_missing_fields_are_422() {
    let app = spawn_app().await;
    let trigger = json!({"type": "interval", "every_seconds": 60});
    for body in [
        json!({"id": "no spaces allowed", "task": "noop", "trigger": trigger}),
        json!({"id": "x".repeat(129), "task": "noop", "trigger": trigger}),
        json!({"task": "noop", "trigger": trigger, "priority": 10}),
        json!({"task": "noop", "trigger": trigger, "priority": -1}),
        json!({"trigger": trigger}),
    ] {
        let (status, _, problem) = app.post("/api/v1/jobs", body).await;
        assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let (status, _, problem) = app
        .post(
            "/api/v1/tasks/submit",
            json!({"task": "noop", "priority": 10}),
        )
        .await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "priority");
}

#[tokio::test]
async fn unknown_routes_and_ids_are_404_problems() {
    let app = spawn_app().await;
    for uri in [
        "/nope",
        "/api/v1/nope",
        "/api/v1/jobs/unknown",
        "/api/v1/jobs/bad%20id",
    ] {
        let (status, _, problem) = app.get(uri).await;
        assert_problem(status, &problem, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn a_known_route_with_the_wrong_method_is_a_405_problem() {
    let app = spawn_app().await;
    let (status, _, problem) = app.send("PUT", "/api/v1/jobs", None, &[]).await;
    assert_problem(status, &problem, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, problem) = app.send("DELETE", "/health", None, &[]).await;
    assert_problem(status, &problem, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn bad_query_strings_and_cursors_are_problems() {
    let app = spawn_app().await;
    let (status, _, problem) = app.get("/api/v1/tasks?limit=1&limit=2").await;
    assert_problem(status, &problem, StatusCode::BAD_REQUEST);
    let (status, _, problem) = app.get("/api/v1/tasks?cursor=%FF%FE").await;
    assert_problem(status, &problem, StatusCode::BAD_REQUEST);
    let (status, _, problem) = app.get("/api/v1/tasks?limit=abc").await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn errors_from_outside_the_handlers_are_problems_too() {
    let app = spawn_app().await;
    let (status, _, problem) = app.get("/docs/no-such-file.js").await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(problem["status"], status.as_u16());
}
