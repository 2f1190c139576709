//! The client side of the history: every request the workload sends to an `idem api` process and
//! what it was told — a status with its task, or *unknown* when the request timed out or its
//! connection broke after it was sent (the server may or may not have acted on it).
//!
//! Invariant: every request sent is recorded exactly once, with the time it was sent and the time
//! its answer (or its failure) came; nothing is inferred here — the oracle judges the history.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 202: a new task.
    Created,
    /// 200 with `Idempotent-Replayed: true`: the task an earlier request made.
    Replayed,
    /// 422: the key was used with another request.
    Conflict,
    /// Any 5xx.
    ServerError,
    /// Any other status.
    Other,
    /// The connection could not be made: the server never saw the request.
    Refused,
    /// A timeout, or a connection that broke after the request was sent.
    Unknown,
}

impl Outcome {
    pub fn accepted(self) -> bool {
        matches!(self, Outcome::Created | Outcome::Replayed)
    }
}

/// One request and its answer.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub key: String,
    /// Which api process (index into the client's bases).
    pub api: usize,
    /// Which body was sent for the key (0 = its usual body; others = deliberately different).
    pub variant: u8,
    pub sent_ms: f64,
    pub done_ms: f64,
    pub status: Option<u16>,
    pub outcome: Outcome,
    pub task_id: Option<String>,
    pub replayed_header: bool,
    pub error: Option<String>,
}

/// Submits tasks and records the history.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub bases: Vec<String>,
    history: Arc<Mutex<Vec<Op>>>,
    t0: Instant,
}

/// A request gets this long before its outcome is recorded as unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    pub fn new(bases: Vec<String>, t0: Instant) -> Client {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(64)
            .build()
            .expect("a plain HTTP client builds");
        Client {
            http,
            bases,
            history: Arc::default(),
            t0,
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1e3
    }

    /// One `POST /api/v1/tasks/submit` of `request` (which carries its `idempotency_key`) to api
    /// `api`, recorded.
    pub async fn submit(&self, api: usize, key: &str, variant: u8, request: &Value) -> Op {
        let api = api % self.bases.len();
        let url = format!("{}/api/v1/tasks/submit", self.bases[api]);
        let sent_ms = self.ms();
        let r = self.http.post(&url).json(request).send().await;
        let mut op = Op {
            key: key.to_owned(),
            api,
            variant,
            sent_ms,
            done_ms: 0.0,
            status: None,
            outcome: Outcome::Unknown,
            task_id: None,
            replayed_header: false,
            error: None,
        };
        match r {
            Ok(resp) => {
                let status = resp.status().as_u16();
                op.replayed_header = resp
                    .headers()
                    .get("idempotent-replayed")
                    .and_then(|v| v.to_str().ok())
                    == Some("true");
                op.status = Some(status);
                match resp.json::<Value>().await {
                    Ok(body) => {
                        op.task_id = body["id"].as_str().map(str::to_owned);
                        op.outcome = match status {
                            202 => Outcome::Created,
                            200 => Outcome::Replayed,
                            422 => Outcome::Conflict,
                            500..=599 => Outcome::ServerError,
                            _ => Outcome::Other,
                        };
                        if op.outcome.accepted() && op.task_id.is_none() {
                            op.outcome = Outcome::Other;
                            op.error = Some(format!("answer without a task id: {body}"));
                        } else if !op.outcome.accepted() {
                            op.error = Some(body.to_string());
                        }
                    }
                    // The status came but the body did not: the server acted (or refused) and we
                    // cannot tell which task.
                    Err(e) => {
                        op.outcome = if (500..600).contains(&status) {
                            Outcome::ServerError
                        } else {
                            Outcome::Unknown
                        };
                        op.error = Some(format!("reading the answer: {e}"));
                    }
                }
            }
            Err(e) => {
                op.outcome = if e.is_connect() {
                    Outcome::Refused
                } else {
                    Outcome::Unknown
                };
                op.error = Some(e.to_string());
            }
        }
        op.done_ms = self.ms();
        self.history.lock().unwrap().push(op.clone());
        op
    }

    /// Submits until an api accepts (202/200) or refuses for good (4xx), rotating through the api
    /// processes on 5xx, refusals and unknown outcomes, for at most `patience` — as a client that
    /// retries with its key would. The last op.
    pub async fn submit_until_settled(
        &self,
        first_api: usize,
        key: &str,
        request: &Value,
        patience: Duration,
    ) -> Op {
        let deadline = Instant::now() + patience;
        let mut api = first_api;
        let mut delay = Duration::from_millis(100);
        loop {
            let op = self.submit(api, key, 0, request).await;
            let retry = matches!(
                op.outcome,
                Outcome::ServerError | Outcome::Refused | Outcome::Unknown
            );
            if !retry || Instant::now() + delay >= deadline {
                return op;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            api += 1;
        }
    }

    /// The whole history so far.
    pub fn history(&self) -> Vec<Op> {
        self.history.lock().unwrap().clone()
    }
}

/// A keyed `http` task that calls `hook` with `{"key", "hold_ms"}`.
pub fn http_task(hook: &str, key: &str, hold_ms: u64, extra: Value) -> Value {
    let mut request = serde_json::json!({
        "task": "http",
        "args": {
            "url": hook,
            "body": {"key": key, "hold_ms": hold_ms},
            "timeout_seconds": (hold_ms as f64 / 1e3 + 30.0),
        },
        "idempotency_key": key,
        "max_retries": 10,
        "timeout_seconds": (hold_ms as f64 / 1e3 + 60.0),
    });
    if let (Some(r), Value::Object(extra)) = (request.as_object_mut(), extra) {
        r.extend(extra);
    }
    request
}
