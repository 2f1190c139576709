//! `/metrics` (Prometheus text) and the metrics the API itself records: submissions, replays, key
//! conflicts, cancels, every HTTP request by method, route and status, and the gauges read from the
//! store at each scrape (queue depth, alive workers and their slots).
//!
//! Invariant: routes are labelled by their template (`/api/v1/tasks/{id}`), never by the raw path,
//! and methods outside the standard ones share one label, so label cardinality is bounded by the
//! route table; unmatched paths share one label.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use idem_core::maintenance::WORKER_FORGET_AFTER;
use idem_core::metrics as m;
use idem_core::{Registry, TaskName, TaskState};

use crate::error::ApiError;
use crate::AppState;

/// The Prometheus text exposition format's media type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// The states counted by `idem_queue_depth`: the unfinished ones.
const DEPTH_STATES: [TaskState; 4] = [
    TaskState::Scheduled,
    TaskState::Queued,
    TaskState::Running,
    TaskState::Retrying,
];

/// Queues seen by earlier scrapes: a queue that emptied must read 0, not its last count.
static SEEN_QUEUES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Exports the API's fixed series at 0: submissions and replays of every registered task, key
/// conflicts and cancels.
pub(crate) fn register(registry: &Registry) {
    for task in registry.names() {
        metrics::counter!(m::SUBMISSIONS_TOTAL, "task" => task.to_owned()).increment(0);
        metrics::counter!(m::SUBMISSION_REPLAYS_TOTAL, "task" => task.to_owned()).increment(0);
    }
    metrics::counter!(m::SUBMISSION_KEY_CONFLICTS_TOTAL).increment(0);
    metrics::counter!(m::TASKS_CANCELLED_TOTAL).increment(0);
}

/// Counts submitted tasks, new ones and replays: one increment per task name and kind, not one per
/// task (a batch carries up to 1000).
pub fn count_submissions<'a>(items: impl IntoIterator<Item = (&'a TaskName, bool)>) {
    let mut counts: Vec<(&TaskName, bool, u64)> = Vec::new();
    for (task, replayed) in items {
        match counts
            .iter_mut()
            .find(|(t, r, _)| *t == task && *r == replayed)
        {
            Some(c) => c.2 += 1,
            None => counts.push((task, replayed, 1)),
        }
    }
    for (task, replayed, n) in counts {
        let name = if replayed {
            m::SUBMISSION_REPLAYS_TOTAL
        } else {
            m::SUBMISSIONS_TOTAL
        };
        metrics::counter!(name, "task" => task.as_str().to_owned()).increment(n);
    }
}

/// Counts a submission refused because its key is held by a different request.
pub(crate) fn count_key_conflict() {
    metrics::counter!(m::SUBMISSION_KEY_CONFLICTS_TOTAL).increment(1);
}

/// Counts a task the API cancelled.
pub(crate) fn count_cancel() {
    metrics::counter!(m::TASKS_CANCELLED_TOTAL).increment(1);
}

/// The `method` label: the standard methods by name, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The `status` label, without an allocation for the statuses the API answers.
fn status_label(status: StatusCode) -> Cow<'static, str> {
    const KNOWN: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (301, "301"),
        (303, "303"),
        (304, "304"),
        (307, "307"),
        (308, "308"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (412, "412"),
        (413, "413"),
        (415, "415"),
        (422, "422"),
        (428, "428"),
        (429, "429"),
        (500, "500"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    let code = status.as_u16();
    match KNOWN.iter().find(|(c, _)| *c == code) {
        Some((_, s)) => Cow::Borrowed(s),
        None => Cow::Owned(code.to_string()),
    }
}

/// Records `idem_http_requests_total` and `idem_http_request_duration_seconds`.
pub async fn track_http(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route: Cow<'static, str> = match req.extensions().get::<MatchedPath>() {
        Some(p) => Cow::Owned(p.as_str().to_owned()),
        None => Cow::Borrowed("unmatched"),
    };
    let res = next.run(req).await;
    let labels = [
        ("method", Cow::Borrowed(method)),
        ("route", route),
        ("status", status_label(res.status())),
    ];
    metrics::counter!(m::HTTP_REQUESTS_TOTAL, &labels).increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, &labels)
        .record(start.elapsed().as_secs_f64());
    res
}

/// Sets `idem_queue_depth{queue,state}` from the store; on a store error the last values stay.
async fn refresh_queue_depths(st: &AppState) {
    let depths = match st.store.queue_depths().await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "queue depths unavailable for /metrics");
            return;
        }
    };
    let mut seen = SEEN_QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    seen.extend(depths.iter().map(|d| d.queue.to_string()));
    for queue in seen.iter() {
        for state in DEPTH_STATES {
            let count = depths
                .iter()
                .filter(|d| d.queue.as_str() == queue && d.state == state)
                .map(|d| d.count)
                .sum::<i64>();
            metrics::gauge!(m::QUEUE_DEPTH, "queue" => queue.clone(), "state" => state.as_str())
                .set(count as f64);
        }
    }
}

/// Sets `idem_workers_alive` and `idem_worker_slots_alive` from the store's worker heartbeats: a
/// worker counts while its last heartbeat is younger than [`WORKER_FORGET_AFTER`], the age past
/// which the store forgets it. On a store error the last values stay.
async fn refresh_workers(st: &AppState) {
    let (now, workers) = match tokio::try_join!(st.store.now(), st.store.list_workers()) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "workers unavailable for /metrics");
            return;
        }
    };
    let alive: Vec<_> = workers
        .iter()
        .filter(|w| w.last_heartbeat_at >= now - WORKER_FORGET_AFTER)
        .collect();
    let slots: u64 = alive.iter().map(|w| u64::from(w.concurrency)).sum();
    metrics::gauge!(m::WORKERS_ALIVE).set(alive.len() as f64);
    metrics::gauge!(m::WORKER_SLOTS_ALIVE).set(slots as f64);
}

/// Prometheus text of every `idem_*` metric this process records, with the store-read gauges
/// refreshed first.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 404, description = "Metrics are not enabled in this process", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn render(State(st): State<AppState>) -> Result<Response, ApiError> {
    let handle = handle(&st)?;
    tokio::join!(refresh_queue_depths(&st), refresh_workers(&st));
    Ok(([(CONTENT_TYPE, PROMETHEUS_TEXT)], handle.render()).into_response())
}

/// `/metrics` of the operations listener: what this process records, without reading the store
/// (the store-read gauges belong to the API's scrape, so that adding up processes counts them once).
pub async fn render_process(State(st): State<AppState>) -> Result<Response, ApiError> {
    let handle = handle(&st)?;
    Ok(([(CONTENT_TYPE, PROMETHEUS_TEXT)], handle.render()).into_response())
}

fn handle(st: &AppState) -> Result<metrics_exporter_prometheus::PrometheusHandle, ApiError> {
    st.metrics
        .clone()
        .ok_or_else(|| ApiError::not_found("metrics are not enabled in this process"))
}
