//! Logs and traces of the real binary: JSON log lines carry a task's fields; with
//! `IDEM_OTLP_ENDPOINT`, spans reach an OTLP/HTTP collector (one runs in this test process) and a
//! task's trace joins the API, the dispatcher and the worker — across processes when they are
//! separate, through the broker message.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use common::{eventually, Proc, TestDb};
use idem_testkit::services::{or_skip, unique_name};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::{json, Value};

/// One received span: its name, trace and parent, and the `idem.role` of the process that sent it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    role: String,
}

/// An OTLP/HTTP collector: stores every span posted to `/v1/traces`.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let store = store.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP request");
                    let mut out = store.lock().unwrap();
                    for rs in req.resource_spans {
                        let role = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "idem.role")
                            .and_then(|a| a.value.as_ref())
                            .map(|v| format!("{:?}", v.value))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                out.push(Span {
                                    name: s.name,
                                    trace_id: hex(&s.trace_id),
                                    span_id: hex(&s.span_id),
                                    parent: hex(&s.parent_span_id),
                                    role: role.clone(),
                                });
                            }
                        }
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { url, spans }
    }

    fn trace(&self, trace_id: &str) -> Vec<Span> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// The client's own trace: the API's request span continues it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn submit_traced(
    client: &reqwest::Client,
    base: &str,
    trace_id: &str,
    queue: &str,
) -> String {
    let res = client
        .post(format!("{base}/api/v1/tasks/submit"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"task": "noop", "queue": queue}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let v: Value = res.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn wait_done(client: &reqwest::Client, base: &str, id: &str) {
    eventually("the task's result", Duration::from_secs(30), || async {
        let res = client
            .get(format!("{base}/api/v1/tasks/{id}/result?wait_seconds=5"))
            .send()
            .await
            .ok()?;
        (res.status() == 200).then_some(())
    })
    .await;
}

/// Waits until the trace holds every span named in `names`; returns the trace.
async fn trace_with(c: &Collector, trace_id: &str, names: &[&str]) -> Vec<Span> {
    eventually(
        "the task's spans at the collector",
        Duration::from_secs(40),
        || async {
            let t = c.trace(trace_id);
            names
                .iter()
                .all(|n| t.iter().any(|s| s.name == *n))
                .then_some(t)
        },
    )
    .await
}

fn one<'a>(trace: &'a [Span], name: &str) -> &'a Span {
    let found: Vec<_> = trace.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "{name} in {trace:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_of_an_attempt_carry_the_task_fields() {
    let db = format!("sqlite://{}", common::db_path().display());
    let p = Proc::spawn_role(
        &["serve", "--database-url", &db, "--bind", "127.0.0.1:0"],
        &[
            ("IDEM_LOG_FORMAT", "json"),
            ("IDEM_LOG", "info,idem_core=debug,idem_api=debug"),
        ],
    );
    let client = reqwest::Client::new();
    let res = client
        .post(p.url("/api/v1/tasks/submit"))
        .json(&json!({"task": "noop", "queue": "default"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_done(&client, &p.base, &id).await;
    let line = eventually(
        "the attempt's log line",
        Duration::from_secs(10),
        || async {
            p.logs().into_iter().find_map(|l| {
                let v: Value = serde_json::from_str(&l).ok()?;
                (v["message"] == "attempt finished" && v["task_id"] == id.as_str()).then_some(v)
            })
        },
    )
    .await;
    assert_eq!(line["attempt"], 1, "{line}");
    assert_eq!(line["queue"], "default", "{line}");
    assert_eq!(line["task"], "noop", "{line}");
    assert_eq!(line["outcome"], "succeeded", "{line}");
    assert_eq!(line["span"], "task.attempt", "{line}");
    assert_eq!(line["level"], "DEBUG", "{line}");
    assert!(line["timestamp"].as_str().is_some(), "{line}");
    assert!(line.get("job_id").is_none(), "no job, no job_id: {line}");
    // The submission's line carries its span's fields too.
    let submitted = p
        .logs()
        .into_iter()
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|v| v["message"] == "task submitted" && v["task_id"] == id.as_str())
        .expect("a line for the submission");
    assert_eq!(submitted["span"], "task.submit");
    assert_eq!(submitted["route"], "/api/v1/tasks/submit");
    // Every line is one JSON object.
    for l in p.logs() {
        assert!(
            serde_json::from_str::<Value>(&l).is_ok_and(|v| v.is_object()),
            "not a JSON object: {l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_exports_a_trace_from_the_request_to_the_attempt() {
    let c = Collector::start().await;
    let db = format!("sqlite://{}", common::db_path().display());
    let p = Proc::spawn_role(
        &["serve", "--database-url", &db, "--bind", "127.0.0.1:0"],
        &[("IDEM_OTLP_ENDPOINT", &c.url)],
    );
    let client = reqwest::Client::new();
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let id = submit_traced(&client, &p.base, trace_id, "default").await;
    wait_done(&client, &p.base, &id).await;
    let t = trace_with(
        &c,
        trace_id,
        &["http.request", "task.submit", "task.attempt"],
    )
    .await;
    let req = one(&t, "http.request");
    let submit = one(&t, "task.submit");
    let attempt = one(&t, "task.attempt");
    assert_eq!(
        req.parent, "00f067aa0ba902b7",
        "continues the client's span"
    );
    assert_eq!(submit.parent, req.span_id);
    assert_eq!(attempt.parent, submit.span_id);
    assert!(t.iter().all(|s| s.role.contains("serve")), "{t:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_joins_api_dispatcher_and_worker_through_the_broker() {
    let (amqp, redis) = (common::amqp_url(), common::redis_url());
    if or_skip("RabbitMQ", common::amqp_reachable(&amqp).await).is_none() {
        return;
    }
    if or_skip("Redis", common::redis_ping(&redis).await).is_none() {
        return;
    }
    let Some(db) = or_skip("PostgreSQL", TestDb::create(&common::pg_url()).await) else {
        return;
    };
    let c = Collector::start().await;
    let queue = unique_name("traced");
    let env: Vec<(String, String)> = vec![
        ("IDEM_DATABASE_URL".into(), db.url.clone()),
        ("IDEM_BROKER_URL".into(), amqp),
        ("IDEM_REDIS_URL".into(), redis),
        ("IDEM_DATABASE_MAX_CONNECTIONS".into(), "5".into()),
        ("IDEM_OTLP_ENDPOINT".into(), c.url.clone()),
    ];
    let specs = vec![
        (
            vec!["api".to_owned(), "--bind".into(), "127.0.0.1:0".into()],
            env.clone(),
        ),
        (vec!["scheduler".to_owned()], env.clone()),
        (
            vec!["worker".to_owned(), "--queues".into(), queue.clone()],
            env.clone(),
        ),
    ];
    let procs = tokio::task::block_in_place(|| Proc::spawn_roles(&specs));
    let base = procs[0].base.clone();
    let client = reqwest::Client::new();
    let id = submit_traced(&client, &base, TRACE_ID, &queue).await;
    wait_done(&client, &base, &id).await;
    let t = trace_with(
        &c,
        TRACE_ID,
        &[
            "http.request",
            "task.submit",
            "task.publish",
            "task.attempt",
        ],
    )
    .await;
    let submit = one(&t, "task.submit");
    let publish = one(&t, "task.publish");
    let attempt = one(&t, "task.attempt");
    assert!(submit.role.contains("api"), "{submit:?}");
    // Every role that commits tasks (a worker commits retries) publishes them: any process's
    // dispatcher may take the task.
    assert!(!publish.role.is_empty(), "{publish:?}");
    assert_eq!(publish.parent, submit.span_id, "{t:#?}");
    assert!(attempt.role.contains("worker"), "{attempt:?}");
    assert_eq!(
        attempt.parent, publish.span_id,
        "the attempt follows the context in the message: {t:#?}"
    );
    drop(procs);
    db.drop_db().await;
}
