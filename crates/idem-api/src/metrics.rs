//! `/metrics` (Prometheus text) and the metrics the API itself records: submissions,
//! replays, and every HTTP request by method, route and status.
//!
//! Invariant: routes are labelled by their template (`/api/v1/tasks/{id}`), never by the raw path,
//! so label cardinality is bounded by the route table; unmatched paths share one label.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use idem_core::{TaskName, TaskState};

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

/// Counts one submitted task: a new one or a replay.
pub fn count_submission(task: &TaskName, replayed: bool) {
    let name = if replayed {
        "idem_submission_replays_total"
    } else {
        "idem_submissions_total"
    };
    metrics::counter!(name, "task" => task.as_str().to_owned()).increment(1);
}

/// Records `idem_http_requests_total` and `idem_http_request_duration_seconds`.
pub async fn track_http(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("idem_http_requests_total", &labels).increment(1);
    metrics::histogram!("idem_http_request_duration_seconds", &labels)
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
            metrics::gauge!("idem_queue_depth", "queue" => queue.clone(), "state" => state.as_str())
                .set(count as f64);
        }
    }
}

/// Prometheus text of every `idem_*` metric this process records.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 404, description = "Metrics are not enabled in this process", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn render(State(st): State<AppState>) -> Result<Response, ApiError> {
    let Some(handle) = st.metrics.clone() else {
        return Err(ApiError::not_found(
            "metrics are not enabled in this process",
        ));
    };
    refresh_queue_depths(&st).await;
    Ok(([(CONTENT_TYPE, PROMETHEUS_TEXT)], handle.render()).into_response())
}
