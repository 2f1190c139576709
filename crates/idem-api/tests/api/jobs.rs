//! Jobs: create, read, list, patch, pause, resume, delete, run now, and their validation.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{Datelike, Timelike};
use serde_json::{json, Value};

use crate::common::{assert_problem, fields, spawn_app, App};

fn interval(every: f64) -> Value {
    json!({"type": "interval", "every_seconds": every})
}

async fn create_job(app: &App, body: Value) -> Value {
    let (status, _, job) = app.post("/api/v1/jobs", body).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job
}

#[tokio::test]
async fn a_created_job_has_the_documented_defaults_and_can_be_read_back() {
    let app = spawn_app().await;
    let job = create_job(
        &app,
        json!({"id": "nightly", "task": "echo", "args": {"a": 1}, "trigger": {"type": "cron", "expr": "0 3 * * *", "timezone": "Europe/Berlin"}}),
    )
    .await;
    assert_eq!(job["id"], "nightly");
    assert_eq!(job["state"], "active");
    assert_eq!(job["misfire_grace_seconds"], 60.0);
    assert_eq!(job["coalesce"], true);
    assert_eq!(job["max_instances"], 1);
    assert_eq!(job["queue"], "default");
    assert_eq!(job["priority"], 0);
    assert_eq!(job["max_retries"], 3);
    assert_eq!(job["timeout_seconds"], 300.0);
    assert_eq!(job["idempotency_ttl_seconds"], 86400.0);
    assert!(job["next_run_at"].is_string());
    assert!(job["last_run_at"].is_null());

    let (status, _, got) = app.get("/api/v1/jobs/nightly").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, job);
}

#[tokio::test]
async fn a_job_without_an_id_gets_a_generated_one() {
    let app = spawn_app().await;
    let job = create_job(&app, json!({"task": "noop", "trigger": interval(60.0)})).await;
    let id = job["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test]
async fn a_date_trigger_that_never_fires_creates_a_finished_job() {
    let app = spawn_app().await;
    let trigger = json!({"type": "date", "run_at": "2020-01-01T00:00:00Z", "start_at": "2021-01-01T00:00:00Z"});
    let job = create_job(
        &app,
        json!({"id": "done", "task": "noop", "trigger": trigger}),
    )
    .await;
    assert_eq!(job["state"], "finished");
    assert!(job["next_run_at"].is_null());
    let (status, _, problem) = app.post_empty("/api/v1/jobs/done/resume").await;
    assert_problem(status, &problem, StatusCode::CONFLICT);
    assert_eq!(problem["detail"], "job is finished");
}

#[tokio::test]
async fn jobs_are_listed_in_pages_linked_by_opaque_cursors() {
    let app = spawn_app().await;
    for i in 0..5 {
        create_job(
            &app,
            json!({"id": format!("job-{i}"), "task": "noop", "trigger": interval(60.0)}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut uri = "/api/v1/jobs?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, _, page) = app.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for job in page["items"].as_array().unwrap() {
            seen.push(job["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/v1/jobs?limit=2&cursor={c}"),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    seen.sort();
    assert_eq!(seen, ["job-0", "job-1", "job-2", "job-3", "job-4"]);
}

#[tokio::test]
async fn job_lists_filter_by_state_and_task_and_refuse_bad_parameters() {
    let app = spawn_app().await;
    create_job(
        &app,
        json!({"id": "a", "task": "noop", "trigger": interval(60.0)}),
    )
    .await;
    create_job(
        &app,
        json!({"id": "b", "task": "echo", "trigger": interval(60.0)}),
    )
    .await;
    app.post_empty("/api/v1/jobs/b/pause").await;

    let (_, _, page) = app.get("/api/v1/jobs?state=paused").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], "b");
    let (_, _, page) = app.get("/api/v1/jobs?task=noop").await;
    assert_eq!(page["items"][0]["id"], "a");
    assert!(page["next_cursor"].is_null());

    let (status, _, problem) = app.get("/api/v1/jobs?state=sleeping&limit=0").await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["state", "limit"]);
    let (status, _, problem) = app.get("/api/v1/jobs?cursor=%21%21").await;
    assert_problem(status, &problem, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["cursor"]);
}

#[tokio::test]
async fn a_duplicate_job_id_is_a_conflict_unless_replace_existing_is_set() {
    let app = spawn_app().await;
    let body = json!({"id": "dup", "task": "noop", "trigger": interval(60.0)});
    create_job(&app, body.clone()).await;
    let (status, _, problem) = app.post("/api/v1/jobs", body).await;
    assert_problem(status, &problem, StatusCode::CONFLICT);

    let replaced = create_job(
        &app,
        json!({"id": "dup", "task": "echo", "trigger": interval(30.0), "replace_existing": true}),
    )
    .await;
    assert_eq!(replaced["task"], "echo");
    let (_, _, got) = app.get("/api/v1/jobs/dup").await;
    assert_eq!(got["task"], "echo");
}

#[tokio::test]
async fn a_retried_job_creation_with_an_idempotency_key_is_replayed() {
    let app = spawn_app().await;
    // An interval without start_at is normalized against the creation time: a replay must still match.
    let body = json!({"id": "once", "task": "noop", "trigger": interval(60.0)});
    let headers = [("idempotency-key", "create-once")];
    let (status, _, first) = app
        .send("POST", "/api/v1/jobs", Some(body.clone()), &headers)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, h, again) = app.send("POST", "/api/v1/jobs", Some(body), &headers).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(h.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again, first);

    let different = json!({"id": "once", "task": "echo", "trigger": interval(60.0)});
    let (status, _, problem) = app
        .send("POST", "/api/v1/jobs", Some(different), &headers)
        .await;
    assert_problem(status, &problem, StatusCode::CONFLICT);
}

#[tokio::test]
async fn patching_a_job_merges_options_and_recomputes_the_next_fire_on_a_new_trigger() {
    let app = spawn_app().await;
    let job = create_job(
        &app,
        json!({"id": "p", "name": "P", "task": "noop", "trigger": interval(3600.0)}),
    )
    .await;

    let (status, _, patched) = app
        .patch("/api/v1/jobs/p", json!({"priority": 5, "args": [1]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["priority"], 5);
    assert_eq!(patched["args"], json!([1]));
    assert_eq!(patched["name"], "P");
    assert_eq!(patched["next_run_at"], job["next_run_at"]);
    assert_eq!(patched["trigger"], job["trigger"]);

    let (status, _, patched) = app
        .patch("/api/v1/jobs/p", json!({"trigger": interval(10.0)}))
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["trigger"]["every_seconds"], 10.0);
    assert_ne!(patched["next_run_at"], job["next_run_at"]);
    assert_eq!(patched["priority"], 5);

    let (status, _, problem) = app
        .patch("/api/v1/jobs/p", json!({"priority": 10, "id": "q"}))
        .await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["id"]);
    let (status, _, problem) = app
        .patch("/api/v1/jobs/p", json!({"priority": 10, "queue": "a b"}))
        .await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["queue", "priority"]);
    let (status, _, problem) = app.patch("/api/v1/jobs/p", json!({"colour": "red"})).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["colour"]);
    let (status, _, problem) = app.patch("/api/v1/jobs/nope", json!({"priority": 1})).await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pause_and_resume_are_idempotent() {
    let app = spawn_app().await;
    create_job(
        &app,
        json!({"id": "pr", "task": "noop", "trigger": interval(60.0)}),
    )
    .await;
    for _ in 0..2 {
        let (status, _, job) = app.post_empty("/api/v1/jobs/pr/pause").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(job["state"], "paused");
    }
    for _ in 0..2 {
        let (status, _, job) = app.post_empty("/api/v1/jobs/pr/resume").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(job["state"], "active");
        assert!(job["next_run_at"].is_string());
    }
    let (status, _, problem) = app.post_empty("/api/v1/jobs/missing/pause").await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_deleted_job_is_gone() {
    let app = spawn_app().await;
    create_job(
        &app,
        json!({"id": "del", "task": "noop", "trigger": interval(60.0)}),
    )
    .await;
    let (status, _, _) = app.send("DELETE", "/api/v1/jobs/del", None, &[]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, problem) = app.get("/api/v1/jobs/del").await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND);
    let (status, _, problem) = app.send("DELETE", "/api/v1/jobs/del", None, &[]).await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn running_a_job_now_submits_a_task_of_the_job_with_a_unique_key() {
    let app = spawn_app().await;
    create_job(
        &app,
        json!({"id": "r", "task": "echo", "args": {"x": 1}, "priority": 7, "trigger": interval(3600.0)}),
    )
    .await;
    let (status, _, t1) = app.post_empty("/api/v1/jobs/r/run").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{t1}");
    let (_, _, t2) = app.post_empty("/api/v1/jobs/r/run").await;
    assert_eq!(t1["job_id"], "r");
    assert_eq!(t1["task"], "echo");
    assert_eq!(t1["args"], json!({"x": 1}));
    assert_eq!(t1["priority"], 7);
    assert_eq!(t1["state"], "queued");
    assert!(t1["idempotency_key"]
        .as_str()
        .unwrap()
        .starts_with("job:r:run:"));
    assert_ne!(t1["id"], t2["id"]);

    let (_, _, page) = app.get("/api/v1/tasks?job_id=r").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (status, _, runs) = app.get("/api/v1/jobs/r/runs?limit=10").await;
    assert_eq!(status, StatusCode::OK);
    assert!(runs["items"].is_array());
    let (status, _, problem) = app.get("/api/v1/jobs/r/runs?limit=5000").await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, problem) = app.post_empty("/api/v1/jobs/none/run").await;
    assert_problem(status, &problem, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn job_validation_reports_every_invalid_field_at_once() {
    let app = spawn_app().await;
    let body = json!({
        "id": "bad id!", "task": "nope", "trigger": interval(60.0), "priority": 10,
        "max_instances": 0, "jitter_seconds": -1, "queue": "", "timeout_seconds": 0,
    });
    let (status, _, problem) = app.post("/api/v1/jobs", body).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    let mut got = fields(&problem);
    got.sort();
    assert_eq!(
        got,
        [
            "id",
            "jitter_seconds",
            "max_instances",
            "priority",
            "queue",
            "task",
            "timeout_seconds"
        ]
    );
}

#[tokio::test]
async fn invalid_triggers_are_refused_naming_the_trigger_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"type": "cron", "expr": "not a cron"}),
            "trigger.expr",
        ),
        (
            json!({"type": "cron", "expr": "0 3 * * *", "timezone": "Mars/Olympus"}),
            "trigger.timezone",
        ),
        (
            json!({"type": "interval", "every_seconds": 0}),
            "trigger.every_seconds",
        ),
        (
            json!({"type": "interval", "every_seconds": -1}),
            "trigger.every_seconds",
        ),
        (json!({"type": "weekly"}), "trigger"),
        (
            json!({"type": "interval", "every_seconds": "often"}),
            "trigger",
        ),
    ];
    for (trigger, field) in cases {
        let (status, _, problem) = app
            .post("/api/v1/jobs", json!({"task": "noop", "trigger": trigger}))
            .await;
        assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
        let got = fields(&problem);
        assert!(got[0].starts_with(field), "{trigger}: {got:?}");
    }
}

#[tokio::test]
async fn cron_outside_the_dialect_is_refused_naming_the_cron_field() {
    let app = spawn_app().await;
    let cases = [
        ("0 0 * MON *", "month field \"MON\""),
        ("0 0 * * JAN", "day-of-week field \"JAN\""),
        ("1,,2 * * * *", "minute field \"1,,2\""),
        ("? ? ? ? ?", "minute field \"?\""),
    ];
    for (expr, needle) in cases {
        let trigger = json!({"type": "cron", "expr": expr});
        let (status, _, problem) = app
            .post("/api/v1/jobs", json!({"task": "noop", "trigger": trigger}))
            .await;
        assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(fields(&problem), ["trigger.expr"], "{expr}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{expr}: {detail}");
    }
}

#[tokio::test]
async fn a_cron_timezone_of_null_means_utc() {
    let app = spawn_app().await;
    let trigger = json!({"type": "cron", "expr": "0 0 */2 * 1", "timezone": null});
    let job = create_job(
        &app,
        json!({"id": "odd-mondays", "task": "noop", "trigger": trigger}),
    )
    .await;
    assert_eq!(job["trigger"]["timezone"], "UTC");
    // An odd-numbered day that is a Monday, at midnight UTC.
    let next: chrono::DateTime<chrono::Utc> = job["next_run_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("next_run_at in {job}"));
    assert_eq!(next.weekday(), chrono::Weekday::Mon, "{next}");
    assert_eq!(
        (next.day() % 2, next.hour(), next.minute()),
        (1, 0, 0),
        "{next}"
    );
}

#[tokio::test]
async fn wrong_types_missing_and_unknown_fields_are_named() {
    let app = spawn_app().await;
    let (status, _, problem) = app.post("/api/v1/jobs", json!({"task": "noop"})).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["trigger"]);
    let body = json!({"task": "noop", "trigger": interval(1.0), "priority": "high"});
    let (status, _, problem) = app.post("/api/v1/jobs", body).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["priority"]);
    let body = json!({"task": "noop", "trigger": interval(1.0), "colour": "red"});
    let (status, _, problem) = app.post("/api/v1/jobs", body).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&problem), ["colour"]);
    let (status, _, problem) = app.post("/api/v1/jobs", json!([1, 2])).await;
    assert_problem(status, &problem, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn jobs_carry_an_etag_that_if_match_makes_a_precondition_of_changes() {
    let app = spawn_app().await;
    let (status, headers, job) = app
        .post(
            "/api/v1/jobs",
            json!({"id": "tagged", "task": "noop", "trigger": interval(60.0)}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let tag = headers["etag"].to_str().unwrap().to_owned();
    assert_eq!(tag, format!("\"{}\"", job["version"]));
    let (_, headers, _) = app.get("/api/v1/jobs/tagged").await;
    assert_eq!(headers["etag"].to_str().unwrap(), tag);

    // A change with the current tag applies and moves the tag on.
    let (status, headers, paused) = app
        .send(
            "POST",
            "/api/v1/jobs/tagged/pause",
            None,
            &[("if-match", tag.as_str())],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["state"], "paused");
    let newer = headers["etag"].to_str().unwrap().to_owned();
    assert_ne!(newer, tag);

    // A change made with the stale tag is refused and changes nothing.
    let (status, _, problem) = app
        .send(
            "PATCH",
            "/api/v1/jobs/tagged",
            Some(json!({"name": "stale"})),
            &[("if-match", tag.as_str())],
        )
        .await;
    assert_problem(status, &problem, StatusCode::PRECONDITION_FAILED);
    let (_, _, job) = app.get("/api/v1/jobs/tagged").await;
    assert_eq!(job["state"], "paused");
    assert!(job["name"].is_null());
    let (status, _, problem) = app
        .send(
            "DELETE",
            "/api/v1/jobs/tagged",
            None,
            &[("if-match", tag.as_str())],
        )
        .await;
    assert_problem(status, &problem, StatusCode::PRECONDITION_FAILED);

    // `*` and a list that holds the current tag both match; a bare word is a bad request.
    let (status, _, _) = app
        .send(
            "POST",
            "/api/v1/jobs/tagged/resume",
            None,
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, headers, _) = app.get("/api/v1/jobs/tagged").await;
    let current = headers["etag"].to_str().unwrap().to_owned();
    let (status, _, problem) = app
        .send("DELETE", "/api/v1/jobs/tagged", None, &[("if-match", "3")])
        .await;
    assert_problem(status, &problem, StatusCode::BAD_REQUEST);
    let list = format!("\"999\", {current}");
    let (status, _, _) = app
        .send(
            "DELETE",
            "/api/v1/jobs/tagged",
            None,
            &[("if-match", list.as_str())],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_change_without_if_match_is_reapplied_to_the_job_it_raced() {
    // PATCH's read and write straddle a pause: the pause must survive (no lost update). The race
    // itself is the store's compare-and-set (conformance suite); here the answer's shape.
    let app = spawn_app().await;
    create_job(
        &app,
        json!({"id": "raced", "task": "noop", "trigger": interval(60.0)}),
    )
    .await;
    let (status, _, _) = app.post_empty("/api/v1/jobs/raced/pause").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, job) = app.patch("/api/v1/jobs/raced", json!({"name": "n"})).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["state"], "paused");
    assert_eq!(job["name"], "n");
}
