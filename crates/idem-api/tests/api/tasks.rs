//! Tasks: submission, idempotent replays, batches, results (with long-polls), cancel and listing.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::Utc;
use idem_core::store::{ClaimRequest, Lease};
use idem_core::{Finish, QueueName, Store, TaskId, WorkerId};
use serde_json::{json, Value};

use crate::common::{assert_problem, fields, spawn_app, App};

async fn submit(app: &App, body: Value) -> Value {
    let (status, _, task) = app.post("/api/v1/tasks/submit", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{task}");
    task
}

/// Finishes the oldest queued task with `result`, as a worker would.
async fn finish_next(store: &dyn Store, result: Value) -> TaskId {
    let now = Utc::now();
    let claims = store
        .claim(&ClaimRequest {
            worker: WorkerId("test-worker".into()),
            queues: vec![QueueName::default_queue()],
            limit: 1,
            now,
            lease_until: now + chrono::Duration::seconds(60),
        })
        .await
        .expect("claim");
    let task = &claims.first().expect("a queued task").task;
    let lease = Lease {
        task_id: task.id,
        attempt: task.attempts,
    };
    store
        .finish(lease, Finish::Succeeded(result), Utc::now())
        .await
        .expect("finish");
    task.id
}

#[tokio::test]
async fn a_submitted_task_is_accepted_queued_and_readable() {
    let app = spawn_app().await;
    let task = submit(&app, json!({"task": "echo", "args": {"hello": "world"}})).await;
    assert_eq!(task["state"], "queued");
    assert_eq!(task["task"], "echo");
    assert_eq!(task["args"], json!({"hello": "world"}));
    assert_eq!(task["queue"], "default");
    assert_eq!(task["max_retries"], 3);
    assert!(task["idempotency_key"].is_null());
    let id = task["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

    let (status, _, got) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, task);
}

#[tokio::test]
async fn a_countdown_or_an_eta_makes_a_scheduled_task_but_not_both() {
    let app = spawn_app().await;
    let task = submit(&app, json!({"task": "noop", "countdown_seconds": 3600})).await;
    assert_eq!(task["state"], "scheduled");
    let task = submit(
        &app,
        json!({"task": "noop", "eta": "2999-01-01T00:00:00+02:00"}),
    )
    .await;
    assert_eq!(task["state"], "scheduled");
    assert_eq!(task["scheduled_at"], "2998-12-31T22:00:00Z");

    let body = json!({"task": "noop", "countdown_seconds": 5, "eta": "2999-01-01T00:00:00Z"});
    let (status, _, problem) = app.post("/api/v1/tasks/submit", body).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json!({"task": "noop", "countdown_seconds": -1, "expires_at": "soon"});
    let (status, _, problem) = app.post("/api/v1/tasks/submit", body).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["expires_at", "countdown_seconds"]);
}

#[tokio::test]
async fn a_replay_with_the_same_key_returns_the_same_task_with_200() {
    let app = spawn_app().await;
    let body = json!({"task": "echo", "args": {"n": 1}, "idempotency_key": "order-42"});
    let first = submit(&app, body.clone()).await;
    let (status, headers, again) = app.post("/api/v1/tasks/submit", body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again["id"], first["id"]);

    let (_, _, page) = app.get("/api/v1/tasks").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn reusing_a_key_with_different_args_is_refused_with_422() {
    let app = spawn_app().await;
    submit(
        &app,
        json!({"task": "echo", "args": {"n": 1}, "idempotency_key": "k1"}),
    )
    .await;
    let body = json!({"task": "echo", "args": {"n": 2}, "idempotency_key": "k1"});
    let (status, _, problem) = app.post("/api/v1/tasks/submit", body).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["title"], "Idempotency key reused");
    assert_eq!(fields(&problem), ["idempotency_key"]);
}

#[tokio::test]
async fn the_idempotency_key_header_wins_over_the_body() {
    let app = spawn_app().await;
    let headers = [("idempotency-key", "from-header")];
    let body = json!({"task": "noop", "idempotency_key": "from-body"});
    let (status, _, task) = app
        .send("POST", "/api/v1/tasks/submit", Some(body), &headers)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(task["idempotency_key"], "from-header");

    let bad = [("idempotency-key", "has space")];
    let (status, _, problem) = app
        .send(
            "POST",
            "/api/v1/tasks/submit",
            Some(json!({"task": "noop"})),
            &bad,
        )
        .await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["idempotency_key"]);
}

#[tokio::test]
async fn a_batch_is_answered_in_request_order() {
    let app = spawn_app().await;
    submit(
        &app,
        json!({"task": "echo", "args": 1, "idempotency_key": "b1"}),
    )
    .await;
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"task": "echo", "args": i, "idempotency_key": format!("b{i}")}))
        .collect();
    let (status, _, out) = app
        .post("/api/v1/tasks/submit/batch", json!({ "items": items }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{out}");
    let got: Vec<Value> = out["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["args"].clone())
        .collect();
    assert_eq!(got, [json!(0), json!(1), json!(2), json!(3), json!(4)]);
}

#[tokio::test]
async fn invalid_batch_items_are_named_by_their_index() {
    let app = spawn_app().await;
    let body = json!({"items": [
        {"task": "noop"},
        {"task": "nope"},
        {"task": "noop", "priority": 10},
    ]});
    let (status, _, problem) = app.post("/api/v1/tasks/submit/batch", body).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["items[1].task", "items[2].priority"]);

    let body = json!({"items": [{"task": "noop"}, {"task": "noop", "priority": "high"}]});
    let (status, _, problem) = app.post("/api/v1/tasks/submit/batch", body).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["items[1].priority"]);

    submit(
        &app,
        json!({"task": "echo", "args": 1, "idempotency_key": "taken"}),
    )
    .await;
    let body = json!({"items": [{"task": "noop"}, {"task": "echo", "args": 2, "idempotency_key": "taken"}]});
    let (status, _, problem) = app.post("/api/v1/tasks/submit/batch", body).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["items[1].idempotency_key"]);
    // Nothing of a refused batch is stored.
    let (_, _, page) = app.get("/api/v1/tasks").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_batch_holds_one_to_a_thousand_tasks() {
    let app = spawn_app().await;
    let items: Vec<Value> = (0..1001).map(|_| json!({"task": "noop"})).collect();
    let (status, _, problem) = app
        .post("/api/v1/tasks/submit/batch", json!({ "items": items }))
        .await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["items"]);
    let (status, _, problem) = app
        .post("/api/v1/tasks/submit/batch", json!({"items": []}))
        .await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    let items: Vec<Value> = (0..1000).map(|_| json!({"task": "noop"})).collect();
    let (status, _, out) = app
        .post("/api/v1/tasks/submit/batch", json!({ "items": items }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(out["items"].as_array().unwrap().len(), 1000);
}

#[tokio::test]
async fn the_result_of_an_unfinished_task_is_202_even_after_waiting() {
    let app = spawn_app().await;
    let task = submit(&app, json!({"task": "noop"})).await;
    let id = task["id"].as_str().unwrap();
    let (status, _, body) = app.get(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, json!({"task_id": id, "state": "queued"}));

    let start = Instant::now();
    let (status, _, _) = app
        .get(&format!("/api/v1/tasks/{id}/result?wait_seconds=1"))
        .await;
    let waited = start.elapsed();
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    for bad in ["61", "-1", "soon"] {
        let (status, _, problem) = app
            .get(&format!("/api/v1/tasks/{id}/result?wait_seconds={bad}"))
            .await;
        assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    }
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_the_task_finishes() {
    let app = spawn_app().await;
    let task = submit(&app, json!({"task": "echo", "args": {"v": 1}})).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let store = app.store.clone();
    let finisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        finish_next(store.as_ref(), json!({"v": 1})).await
    });
    let start = Instant::now();
    let (status, _, body) = app
        .get(&format!("/api/v1/tasks/{id}/result?wait_seconds=30"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        body,
        json!({"task_id": id, "state": "succeeded", "result": {"v": 1}})
    );
    assert_eq!(finisher.await.unwrap().to_string(), id);
}

#[tokio::test]
async fn cancelling_a_queued_task_cancels_it_and_its_result_is_final() {
    let app = spawn_app().await;
    let task = submit(&app, json!({"task": "noop"})).await;
    let id = task["id"].as_str().unwrap();
    let (status, _, cancelled) = app.post_empty(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let (status, _, again) = app.post_empty(&format!("/api/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["state"], "cancelled");

    let (status, _, result) = app.get(&format!("/api/v1/tasks/{id}/result")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["state"], "cancelled");
    assert!(result["error"]["kind"].is_string(), "{result}");

    let unknown = uuid::Uuid::now_v7();
    let (status, _, problem) = app
        .post_empty(&format!("/api/v1/tasks/{unknown}/cancel"))
        .await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_and_malformed_task_ids_are_not_found() {
    let app = spawn_app().await;
    let unknown = uuid::Uuid::now_v7();
    for uri in [
        format!("/api/v1/tasks/{unknown}"),
        format!("/api/v1/tasks/{unknown}/result"),
        "/api/v1/tasks/not-a-uuid".to_owned(),
        "/api/v1/tasks/not-a-uuid/result".to_owned(),
    ] {
        let (status, _, problem) = app.get(&uri).await;
        assert_problem(status, &problem, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn tasks_are_listed_by_state_task_and_job_in_pages() {
    let app = spawn_app().await;
    for i in 0..3 {
        submit(&app, json!({"task": "echo", "args": i})).await;
    }
    let noop = submit(&app, json!({"task": "noop"})).await;
    app.post_empty(&format!(
        "/api/v1/tasks/{}/cancel",
        noop["id"].as_str().unwrap()
    ))
    .await;

    let (_, _, page) = app.get("/api/v1/tasks?state=cancelled").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (_, _, page) = app.get("/api/v1/tasks?task=echo&limit=2").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (_, _, page) = app
        .get(&format!("/api/v1/tasks?task=echo&limit=2&cursor={cursor}"))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page["next_cursor"].is_null());

    let (status, _, problem) = app.get("/api/v1/tasks?state=done").await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["state"]);
    let (status, _, problem) = app.get("/api/v1/tasks?job_id=a%20b").await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn submission_validation_reports_every_invalid_field() {
    let app = spawn_app().await;
    let body = json!({
        "task": "nope", "priority": 10, "queue": "", "max_retries": 101,
        "timeout_seconds": 0, "idempotency_ttl_seconds": -5,
    });
    let (status, _, problem) = app.post("/api/v1/tasks/submit", body).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    let mut got = fields(&problem);
    got.sort();
    assert_eq!(
        got,
        [
            "idempotency_ttl_seconds",
            "max_retries",
            "priority",
            "queue",
            "task",
            "timeout_seconds"
        ]
    );
}

#[tokio::test]
async fn keys_in_the_schedulers_job_namespace_are_refused_single_and_batch() {
    let app = spawn_app().await;
    // The key a fire of job "nightly" would use, before that slot has fired.
    let key = "job:nightly:2030-01-01T03:00:00.000Z";
    let (status, _, problem) = app
        .post(
            "/api/v1/tasks/submit",
            json!({"task": "noop", "idempotency_key": key}),
        )
        .await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["idempotency_key"]);

    let (status, _, problem) = app
        .send(
            "POST",
            "/api/v1/tasks/submit",
            Some(json!({"task": "noop"})),
            &[("idempotency-key", key)],
        )
        .await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["idempotency_key"]);

    let batch = json!({"items": [
        {"task": "noop", "idempotency_key": "fine"},
        {"task": "noop", "idempotency_key": "job:x:run:1"},
    ]});
    let (status, _, problem) = app.post("/api/v1/tasks/submit/batch", batch).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["items[1].idempotency_key"]);
    // Nothing of the refused batch was stored.
    let (_, _, page) = app.get("/api/v1/tasks").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
}
