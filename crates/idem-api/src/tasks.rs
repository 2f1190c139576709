//! `/api/v1/tasks`: read, list, cancel, and wait for a task's result.
//!
//! Invariant: the result long-poll subscribes to the store's "finished" wake-up *before* it reads the
//! task, so a task finishing between the read and the wait is never missed; a 250 ms tick covers
//! tasks finished by another process, whose wake-ups this process may not see.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use idem_core::store::TaskFilter;
use idem_core::{ErrorInfo, JobId, Task, TaskId, TaskName, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, Problem};
use crate::extract::{ApiQuery, PathId};
use crate::pagination::{encode_cursor, page_request};
use crate::validate::Checker;
use crate::AppState;

/// The longest `wait_seconds` of a result long-poll.
pub(crate) const MAX_WAIT_SECONDS: f64 = 60.0;
/// How often a long-poll looks again without a wake-up (a task finished by another process).
const POLL_TICK: Duration = Duration::from_millis(250);

/// `GET /api/v1/tasks` filters and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TaskListQuery {
    /// Only tasks in this state.
    #[param(value_type = Option<TaskState>)]
    pub state: Option<String>,
    /// Only tasks of this task name.
    pub task: Option<String>,
    /// Only tasks fired by this job.
    pub job_id: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /api/v1/tasks/{id}/result` options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultQuery {
    /// Wait up to this many seconds (0..=60) for the task to finish.
    #[param(value_type = Option<f64>, minimum = 0, maximum = 60)]
    pub wait_seconds: Option<String>,
}

/// A page of tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    pub items: Vec<Task>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A task's outcome: `result` when it succeeded, `error` when it failed, was cancelled or expired,
/// neither while it is unfinished.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskResult {
    #[schema(value_type = String, format = Uuid)]
    pub task_id: TaskId,
    pub state: TaskState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

impl TaskResult {
    fn of(task: Task) -> Self {
        let (result, error) = match task.state {
            TaskState::Succeeded => (Some(task.result.unwrap_or(Value::Null)), None),
            s if s.is_final() => {
                let fallback = || ErrorInfo::new(s.as_str(), format!("task {}", s.as_str()));
                (None, Some(task.error.unwrap_or_else(fallback)))
            }
            _ => (None, None),
        };
        Self {
            task_id: task.id,
            state: task.state,
            result,
            error,
        }
    }
}

/// A task id from the path; anything but a UUID names no task: 404.
fn task_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse::<TaskId>()
        .map_err(|_| ApiError::not_found(format!("task {raw:?} not found")))
}

async fn load(st: &AppState, id: TaskId) -> Result<Task, ApiError> {
    st.store
        .get_task(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("task {id} not found")))
}

/// Reads a task.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}", tag = "tasks", params(("id" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = Task),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(State(st): State<AppState>, PathId(raw): PathId) -> Result<Json<Task>, ApiError> {
    load(&st, task_id(&raw)?).await.map(Json)
}

/// A task's result: 200 once it is final, 202 while it is not. `wait_seconds` long-polls.
#[utoipa::path(
    get, path = "/api/v1/tasks/{id}/result", tag = "tasks",
    params(("id" = String, Path, format = Uuid), ResultQuery),
    responses(
        (status = 200, description = "Final", body = TaskResult),
        (status = 202, description = "Not finished yet", body = TaskResult),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn result(
    State(st): State<AppState>,
    PathId(raw): PathId,
    ApiQuery(q): ApiQuery<ResultQuery>,
) -> Result<(StatusCode, Json<TaskResult>), ApiError> {
    let id = task_id(&raw)?;
    let wait = match q.wait_seconds.as_deref().filter(|s| !s.is_empty()) {
        None => 0.0,
        Some(s) => match s.trim().parse::<f64>() {
            Ok(w) if (0.0..=MAX_WAIT_SECONDS).contains(&w) => w,
            _ => {
                return Err(ApiError::invalid(
                    "wait_seconds",
                    format!("must be a number between 0 and {MAX_WAIT_SECONDS}"),
                ))
            }
        },
    };
    let deadline = Instant::now() + Duration::from_secs_f64(wait);
    // Subscribe before the first read: a finish committed after it bumps this receiver.
    let mut finished = st.store.wakeups().subscribe_finished();
    let mut wakeups_alive = true;
    loop {
        let task = load(&st, id).await?;
        if task.state.is_final() {
            return Ok((StatusCode::OK, Json(TaskResult::of(task))));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok((StatusCode::ACCEPTED, Json(TaskResult::of(task))));
        }
        let tick = tokio::time::sleep_until(deadline.min(now + POLL_TICK));
        if wakeups_alive {
            tokio::select! {
                changed = finished.changed() => wakeups_alive = changed.is_ok(),
                _ = tick => {}
            }
        } else {
            tick.await;
        }
    }
}

/// Cancels a task: queued, scheduled or retrying at once; running: its handler is stopped. A final
/// task is returned unchanged.
#[utoipa::path(
    post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = String, Path, format = Uuid)),
    responses(
        (status = 200, body = Task),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(st): State<AppState>,
    PathId(raw): PathId,
) -> Result<Json<Task>, ApiError> {
    let id = task_id(&raw)?;
    let now = st.store.now().await?;
    let task = st
        .store
        .cancel_task(id, now)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("task {id} not found")))?;
    // A task that was already final comes back unchanged; one this call cancelled finished now.
    if task.state == TaskState::Cancelled && task.finished_at == Some(now) {
        crate::metrics::count_cancel();
    }
    Ok(Json(task))
}

/// Lists tasks, oldest first, a page at a time.
#[utoipa::path(
    get, path = "/api/v1/tasks", tag = "tasks", params(TaskListQuery),
    responses(
        (status = 200, body = TaskPage),
        (status = 400, description = "Bad cursor", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter or limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<TaskListQuery>,
) -> Result<Json<TaskPage>, ApiError> {
    let mut c = Checker::new("");
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => s.parse::<TaskState>().map_err(|e| c.push("state", e)).ok(),
        None => None,
    };
    let task = match q.task.filter(|s| !s.is_empty()) {
        Some(t) => c.id::<TaskName>("task", t),
        None => None,
    };
    let job_id = match q.job_id.filter(|s| !s.is_empty()) {
        Some(j) => c.id::<JobId>("job_id", j),
        None => None,
    };
    let page = page_request(&mut c, q.limit.as_deref(), q.cursor.as_deref())?;
    c.finish()?;
    let filter = TaskFilter {
        state,
        task,
        job_id,
    };
    let page = st.store.list_tasks(&filter, &page).await?;
    Ok(Json(TaskPage {
        items: page.items,
        next_cursor: page.next_cursor.as_deref().map(encode_cursor),
    }))
}
