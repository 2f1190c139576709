//! End-to-end behaviour of `idem serve` on SQLite: the API, the scheduler and the workers together,
//! over real HTTP on port 0 with a fresh database per test.

mod common;

use std::time::Duration;

use common::{eventually, spawn_app, spawn_app_on, wait_result};
use serde_json::{json, Value};

async fn task_state(app: &common::TestApp, id: &str) -> String {
    app.get(&format!("/api/v1/tasks/{id}")).await.1["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_task_runs_and_its_result_long_polls() {
    let app = spawn_app(&[]).await;
    let (status, task) = app
        .post(
            "/api/v1/tasks/submit",
            json!({"task": "echo", "args": {"hello": "world"}}),
        )
        .await;
    assert_eq!(status, 202, "{task}");
    let id = task["id"].as_str().unwrap();
    let result = wait_result(&app, id).await;
    assert_eq!(result["state"], "succeeded");
    assert_eq!(result["result"], json!({"hello": "world"}));
    let (_, t) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(t["attempts"], 1);
    assert!(t["started_at"].is_string() && t["finished_at"].is_string());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_submission_returns_the_same_task_and_runs_once() {
    let app = spawn_app(&[]).await;
    let body = json!({"task": "echo", "args": {"n": 1}, "idempotency_key": "order-42"});
    let (s1, t1) = app.post("/api/v1/tasks/submit", body.clone()).await;
    let r = app
        .client
        .post(app.url("/api/v1/tasks/submit"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let t2: Value = r.json().await.unwrap();
    assert_eq!(s1, 202);
    assert_eq!(t1["id"], t2["id"]);
    let (s3, problem) = app
        .post(
            "/api/v1/tasks/submit",
            json!({"task": "echo", "args": {"n": 2}, "idempotency_key": "order-42"}),
        )
        .await;
    assert_eq!(s3, 422, "{problem}");
    wait_result(&app, t1["id"].as_str().unwrap()).await;
    let (_, list) = app.get("/api/v1/tasks?task=echo").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_retries_to_success() {
    let app = spawn_app(&[]).await;
    let (_, task) = app
        .post(
            "/api/v1/tasks/submit",
            json!({"task": "fail", "args": {"times": 2}, "max_retries": 3}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let result = wait_result(&app, id).await;
    assert_eq!(result["state"], "succeeded", "{result}");
    let (_, t) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(t["attempts"], 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_fails_when_retries_are_exhausted() {
    let app = spawn_app(&[]).await;
    let (_, task) = app
        .post(
            "/api/v1/tasks/submit",
            json!({"task": "fail", "args": {"message": "nope"}, "max_retries": 1}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let result = wait_result(&app, id).await;
    assert_eq!(result["state"], "failed");
    assert_eq!(result["error"]["message"], "nope");
    let (_, t) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(t["attempts"], 2, "one attempt and one retry");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_its_timeout_is_stopped() {
    let app = spawn_app(&[]).await;
    let started = std::time::Instant::now();
    let (_, task) = app
        .post(
            "/api/v1/tasks/submit",
            json!({"task": "sleep", "args": {"seconds": 30}, "timeout_seconds": 0.3, "max_retries": 0}),
        )
        .await;
    let result = wait_result(&app, task["id"].as_str().unwrap()).await;
    assert_eq!(result["state"], "failed");
    assert_eq!(result["error"]["kind"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_task_stops_its_handler() {
    let app = spawn_app(&["--worker-concurrency", "1"]).await;
    let (_, task) = app
        .post(
            "/api/v1/tasks/submit",
            json!({"task": "sleep", "args": {"seconds": 30}}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    eventually("running", Duration::from_secs(10), || async {
        (task_state(&app, &id).await == "running").then_some(())
    })
    .await;
    let (status, cancelled) = app
        .post(&format!("/api/v1/tasks/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["state"], "cancelled");
    // The only slot is free again: the next task runs at once.
    let (_, next) = app
        .post("/api/v1/tasks/submit", json!({"task": "noop"}))
        .await;
    let result = wait_result(&app, next["id"].as_str().unwrap()).await;
    assert_eq!(result["state"], "succeeded");
    assert_eq!(task_state(&app, &id).await, "cancelled");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_countdown_task_is_scheduled_then_runs() {
    let app = spawn_app(&[]).await;
    let (_, task) = app
        .post(
            "/api/v1/tasks/submit",
            json!({"task": "noop", "countdown_seconds": 1}),
        )
        .await;
    assert_eq!(task["state"], "scheduled");
    let result = wait_result(&app, task["id"].as_str().unwrap()).await;
    assert_eq!(result["state"], "succeeded");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_job_fires_and_pause_resume_delete_control_it() {
    let app = spawn_app(&[]).await;
    let (status, job) = app
        .post(
            "/api/v1/jobs",
            json!({"id": "tick", "task": "noop", "trigger": {"type": "interval", "every_seconds": 0.5}}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let fired = || async {
        let (_, runs) = app.get("/api/v1/jobs/tick/runs?limit=1000").await;
        runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["outcome"] == "fired")
            .count()
    };
    eventually("two fires", Duration::from_secs(10), || async {
        (fired().await >= 2).then_some(())
    })
    .await;

    let (_, paused) = app.post("/api/v1/jobs/tick/pause", json!({})).await;
    assert_eq!(paused["state"], "paused");
    let at_pause = fired().await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // a pause is observed over time
    assert_eq!(fired().await, at_pause, "a paused job does not fire");

    let (_, resumed) = app.post("/api/v1/jobs/tick/resume", json!({})).await;
    assert_eq!(resumed["state"], "active");
    eventually("fires after resume", Duration::from_secs(10), || async {
        (fired().await > at_pause).then_some(())
    })
    .await;

    let r = app
        .client
        .delete(app.url("/api/v1/jobs/tick"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (_, tasks) = app.get("/api/v1/tasks?job_id=tick&limit=1000").await;
    let before = tasks["items"].as_array().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, tasks) = app.get("/api/v1/tasks?job_id=tick&limit=1000").await;
    assert_eq!(
        tasks["items"].as_array().unwrap().len(),
        before,
        "a deleted job does not fire"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fire_makes_one_task_with_the_fire_key() {
    let app = spawn_app(&[]).await;
    app.post(
        "/api/v1/jobs",
        json!({"id": "k", "task": "echo", "args": {"x": 1}, "trigger": {"type": "interval", "every_seconds": 0.2}}),
    )
    .await;
    eventually("five fires", Duration::from_secs(10), || async {
        let (_, runs) = app.get("/api/v1/jobs/k/runs").await;
        (runs["items"].as_array().unwrap().len() >= 5).then_some(())
    })
    .await;
    app.post("/api/v1/jobs/k/pause", json!({})).await;
    let (_, runs) = app.get("/api/v1/jobs/k/runs?limit=1000").await;
    let (_, tasks) = app.get("/api/v1/tasks?job_id=k&limit=1000").await;
    let keys: std::collections::HashSet<_> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["idempotency_key"].as_str().unwrap().to_owned())
        .collect();
    let fired: Vec<_> = runs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "fired")
        .collect();
    assert_eq!(
        keys.len(),
        tasks["items"].as_array().unwrap().len(),
        "one task per key"
    );
    assert_eq!(keys.len(), fired.len(), "one task per fire");
    for r in fired {
        let at = chrono::DateTime::parse_from_rfc3339(r["scheduled_at"].as_str().unwrap()).unwrap();
        let key = format!(
            "job:k:{}",
            at.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        );
        assert!(keys.contains(&key), "{key}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_fires_outside_the_trigger() {
    let app = spawn_app(&[]).await;
    app.post(
        "/api/v1/jobs",
        json!({"id": "yearly", "task": "echo", "args": {"y": 1}, "trigger": {"type": "cron", "expr": "@yearly"}}),
    )
    .await;
    let (status, task) = app.post("/api/v1/jobs/yearly/run", json!({})).await;
    assert_eq!(status, 202, "{task}");
    assert_eq!(task["job_id"], "yearly");
    let result = wait_result(&app, task["id"].as_str().unwrap()).await;
    assert_eq!(result["result"], json!({"y": 1}));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_jobs_and_results() {
    let db = common::db_path();
    let app = spawn_app_on(&db, &[]).await;
    app.post(
        "/api/v1/jobs",
        json!({"id": "keep", "task": "noop", "trigger": {"type": "cron", "expr": "0 0 1 1 *", "timezone": "Europe/Berlin"}}),
    )
    .await;
    let (_, task) = app
        .post(
            "/api/v1/tasks/submit",
            json!({"task": "echo", "args": [1, 2]}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    wait_result(&app, &id).await;
    app.stop().await;

    let app = spawn_app_on(&db, &[]).await;
    let (status, job) = app.get("/api/v1/jobs/keep").await;
    assert_eq!(status, 200);
    assert_eq!(job["trigger"]["timezone"], "Europe/Berlin");
    let (_, result) = app.get(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(result["result"], json!([1, 2]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_report_their_heartbeat() {
    let app = spawn_app(&["--worker-concurrency", "3", "--queues", "default,mail"]).await;
    let workers = eventually("a worker row", Duration::from_secs(10), || async {
        let (_, w) = app.get("/api/v1/workers").await;
        let items = w["items"].as_array().cloned().unwrap_or_default();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(workers[0]["concurrency"], 3);
    assert_eq!(workers[0]["queues"], json!(["default", "mail"]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_export_the_core_series() {
    let app = spawn_app(&[]).await;
    let (_, task) = app
        .post("/api/v1/tasks/submit", json!({"task": "noop"}))
        .await;
    wait_result(&app, task["id"].as_str().unwrap()).await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "idem_submissions_total",
        "idem_tasks_total",
        "idem_task_duration_seconds",
        "idem_task_queue_wait_seconds",
        "idem_lock_acquisitions_total",
        "idem_completion_group_size",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_task_that_panics_fails_its_attempt_and_is_retried() {
    // An application's own typed handler, registered through the public API.
    let app = common::spawn_app_with(&common::db_path(), &[], |registry| {
        registry.register(
            "flaky",
            |ctx: idem_core::TaskContext, args: Value| async move {
                if ctx.attempt < 2 {
                    panic!("kaboom");
                }
                Ok::<_, idem_core::TaskError>(json!({"recovered": args}))
            },
        );
    })
    .await;
    let (_, task) = app
        .post("/api/v1/tasks/submit", json!({"task": "flaky", "args": 7}))
        .await;
    let id = task["id"].as_str().unwrap();
    let result = wait_result(&app, id).await;
    assert_eq!(result["state"], "succeeded", "{result}");
    assert_eq!(result["result"], json!({"recovered": 7}));
    let (_, t) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(t["attempts"], 2);
    app.stop().await;
}
