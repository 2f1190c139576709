//! `POST /api/v1/tasks/submit` and `/submit/batch`: immediate and delayed task submission with
//! idempotency keys.
//!
//! Invariant: the API only builds the tasks and their fingerprints; whether a key is new, a replay
//! or a conflict is decided by the store, in the one transaction of `Store::submit`. The
//! fingerprint covers exactly what a replay must repeat: task, args, queue, priority
//! and the requested eta or countdown.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use idem_core::task::{fingerprint, Idempotency};
use idem_core::{
    IdempotencyKey, NewTask, QueueName, Registry, StoreError, Submitted, Task, TaskId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;
use utoipa::ToSchema;

use crate::error::{ApiError, FieldError, Problem};
use crate::extract::{idempotency_header, ApiJson, IDEMPOTENT_REPLAYED};
use crate::validate::{Checker, Min, TEN_YEARS_SECONDS};
use crate::AppState;

/// The most tasks one batch may carry.
pub const MAX_BATCH: usize = 1000;

/// One task to run. Absent (or `null`) options take the defaults shown.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitTaskRequest {
    /// A registered task name.
    #[schema(example = "echo")]
    pub task: String,
    /// The task's arguments, any JSON (default `null`).
    #[serde(default)]
    pub args: Value,
    /// 1 to 255 printable ASCII characters. The `Idempotency-Key` header, when sent, wins.
    #[schema(example = "order-42")]
    pub idempotency_key: Option<String>,
    #[schema(default = "default")]
    pub queue: Option<String>,
    /// 0..=9, higher first.
    #[schema(default = 0)]
    pub priority: Option<i64>,
    /// Run after this many seconds (0 to 10 years). Not with `eta`.
    pub countdown_seconds: Option<f64>,
    /// Run at this RFC 3339 instant. Not with `countdown_seconds`.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub eta: Option<String>,
    /// Not started by then: the task becomes `expired`.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<String>,
    /// Retries after the first attempt (0..=100).
    #[schema(default = 3)]
    pub max_retries: Option<i64>,
    /// Per attempt (> 0, at most 604800).
    #[schema(default = 300.0)]
    pub timeout_seconds: Option<f64>,
    /// How long the key is kept (> 0, at most 31536000).
    #[schema(default = 86400.0)]
    pub idempotency_ttl_seconds: Option<f64>,
}

/// Up to 1000 tasks submitted in one transaction.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatchRequest {
    pub items: Vec<SubmitTaskRequest>,
}

/// The tasks of a batch, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub items: Vec<Task>,
}

/// Builds one task, recording its invalid fields in `c`. `header_key` (the `Idempotency-Key`
/// header) wins over the body's key.
fn build(
    req: SubmitTaskRequest,
    header_key: Option<IdempotencyKey>,
    registry: &Registry,
    now: DateTime<Utc>,
    c: &mut Checker,
) -> Option<NewTask> {
    let task = c.task("task", req.task, registry);
    let queue = c.id::<QueueName>("queue", req.queue.unwrap_or_else(|| "default".into()));
    let priority = c.int("priority", req.priority, 0, 0..=9) as i16;
    let max_retries = c.int("max_retries", req.max_retries, 3, 0..=100) as i32;
    let timeout_seconds = c.seconds(
        "timeout_seconds",
        req.timeout_seconds,
        300.0,
        Min::Positive,
        604_800.0,
    );
    let ttl = c.seconds(
        "idempotency_ttl_seconds",
        req.idempotency_ttl_seconds,
        86_400.0,
        Min::Positive,
        31_536_000.0,
    );
    let key = match (header_key, req.idempotency_key) {
        (Some(k), _) => Some(k),
        (None, Some(k)) => c.id::<IdempotencyKey>("idempotency_key", k),
        (None, None) => None,
    };
    if key.as_ref().is_some_and(|k| k.is_reserved()) {
        c.push(
            "idempotency_key",
            format!(
                "keys starting with {:?} are reserved for the scheduler's fires",
                IdempotencyKey::RESERVED_PREFIX
            ),
        );
    }
    let expires_at = c.timestamp("expires_at", req.expires_at.as_deref());
    // `when` is fingerprinted as requested: a replay of "in 60 s" is a replay, whenever it comes.
    let (run_at, when) = match (req.eta.as_deref(), req.countdown_seconds) {
        (Some(_), Some(_)) => {
            c.push("eta", "give either eta or countdown_seconds, not both");
            (now, Value::Null)
        }
        (Some(eta), None) => match c.timestamp("eta", Some(eta)) {
            Some(t) => (t, json!({ "eta": idem_core::time::rfc3339_ms(t) })),
            None => (now, Value::Null),
        },
        (None, Some(s)) => {
            let s = c.seconds(
                "countdown_seconds",
                Some(s),
                0.0,
                Min::Zero,
                TEN_YEARS_SECONDS,
            );
            (
                now + idem_core::time::chrono_secs(s),
                json!({ "countdown_seconds": s }),
            )
        }
        (None, None) => (now, Value::Null),
    };
    let task = task?;
    let queue = queue?;
    let idempotency = key.map(|key| Idempotency {
        fingerprint: fingerprint(&task, &req.args, &queue, priority, &when),
        key,
        ttl_seconds: ttl,
    });
    Some(NewTask {
        id: TaskId::generate(),
        task,
        args: req.args,
        queue,
        priority,
        max_retries,
        timeout_seconds,
        run_at: idem_core::time::trunc_ms(run_at),
        expires_at,
        job_id: None,
        idempotency,
        traceparent: None,
    })
}

/// Stores the tasks; a conflicting key is a 422 naming its field (`field_of(index)`).
async fn store_all(
    st: &AppState,
    tasks: Vec<NewTask>,
    now: DateTime<Utc>,
    field_of: impl Fn(usize) -> String,
) -> Result<Vec<Submitted>, ApiError> {
    match st.store.submit(tasks, now).await {
        Ok(out) => {
            crate::metrics::count_submissions(out.iter().map(|s| (&s.task.task, s.replayed)));
            Ok(out)
        }
        Err(StoreError::KeyConflict { index, key }) => {
            crate::metrics::count_key_conflict();
            Err(ApiError::key_reused(field_of(index), &key))
        }
        Err(e) => Err(e.into()),
    }
}

/// The idempotency cache's fast path: a key the cache remembers with the same fingerprint is a
/// replay of its task. Any other answer (a miss, another fingerprint, the cache down) goes to the
/// store, which decides.
async fn cached_replay(st: &AppState, task: &NewTask) -> Option<Task> {
    let (cache, idem) = (st.cache.as_ref()?, task.idempotency.as_ref()?);
    let (fingerprint, id) = cache.get(idem.key.as_str()).await.ok()??;
    if fingerprint != idem.fingerprint {
        return None;
    }
    st.store.get_task(id).await.ok()?
}

/// Submits one task. A replay of an earlier submission (same key, same request, within the key's
/// TTL) answers 200 with the original task and `Idempotent-Replayed: true`.
#[utoipa::path(
    post, path = "/api/v1/tasks/submit", tag = "tasks",
    request_body = SubmitTaskRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Wins over the body's idempotency_key")),
    responses(
        (status = 202, description = "Accepted", body = Task),
        (status = 200, description = "Replay (Idempotent-Replayed: true)", body = Task),
        (status = 422, description = "Invalid fields, or the key was used with a different request", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn submit(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SubmitTaskRequest>,
) -> Result<Response, ApiError> {
    let now = st.store.now().await?;
    let header_key = idempotency_header(&headers)?;
    let mut c = Checker::new("");
    let task = build(req, header_key, &st.registry, now, &mut c);
    c.finish()?;
    let mut task = task.ok_or_else(|| ApiError::internal("a valid submission built no task"))?;
    let span = tracing::info_span!("task.submit", task = %task.task, queue = %task.queue,
        task_id = tracing::field::Empty, replayed = tracing::field::Empty);
    task.traceparent = idem_core::trace::traceparent_of(&span);
    submit_in(st, task, now).instrument(span).await
}

/// The single-task submission inside its `task.submit` span.
async fn submit_in(st: AppState, task: NewTask, now: DateTime<Utc>) -> Result<Response, ApiError> {
    let span = tracing::Span::current();
    if let Some(replay) = cached_replay(&st, &task).await {
        span.record("task_id", tracing::field::display(replay.id));
        span.record("replayed", true);
        crate::metrics::count_submissions([(&replay.task, true)]);
        return Ok(([(IDEMPOTENT_REPLAYED, "true")], Json(replay)).into_response());
    }
    let idempotency = task.idempotency.clone();
    let submitted = store_all(&st, vec![task], now, |_| "idempotency_key".into()).await?;
    let first = submitted
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("submit returned no task"))?;
    span.record("task_id", tracing::field::display(first.task.id));
    span.record("replayed", first.replayed);
    tracing::debug!("task submitted");
    if let (Some(cache), Some(idem), false) = (&st.cache, idempotency, first.replayed) {
        // A little shorter than the store's record, so the cache never outlives the key.
        let ttl = idem_core::time::secs_f64(idem.ttl_seconds - 1.0);
        if let Err(e) = cache
            .put(idem.key.as_str(), &idem.fingerprint, first.task.id, ttl)
            .await
        {
            tracing::debug!(error = %e, "idempotency cache unavailable");
        }
    }
    if first.replayed {
        Ok(([(IDEMPOTENT_REPLAYED, "true")], Json(first.task)).into_response())
    } else {
        Ok((StatusCode::ACCEPTED, Json(first.task)).into_response())
    }
}

/// Submits up to 1000 tasks in one transaction; the answer lists them in request order (replays
/// included, as the original tasks). Invalid items are named `items[i].field`; nothing is stored
/// unless every item is valid. The `Idempotency-Key` header is not used: each item has its own key.
#[utoipa::path(
    post, path = "/api/v1/tasks/submit/batch", tag = "tasks",
    request_body = SubmitBatchRequest,
    responses(
        (status = 202, description = "Accepted", body = TaskList),
        (status = 422, description = "Invalid items, or a key used with a different request", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn submit_batch(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<SubmitBatchRequest>,
) -> Result<(StatusCode, Json<TaskList>), ApiError> {
    let n = req.items.len();
    if n == 0 || n > MAX_BATCH {
        return Err(ApiError::invalid(
            "items",
            format!("must hold 1 to {MAX_BATCH} tasks, got {n}"),
        ));
    }
    let now = st.store.now().await?;
    let mut errors: Vec<FieldError> = Vec::new();
    let mut tasks = Vec::with_capacity(n);
    for (i, item) in req.items.into_iter().enumerate() {
        let mut c = Checker::new(format!("items[{i}]"));
        let task = build(item, None, &st.registry, now, &mut c);
        errors.extend(c.into_errors());
        tasks.extend(task);
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    // One span for the batch: each task's trace continues from it.
    let span = tracing::info_span!("task.submit", count = tasks.len());
    let traceparent = idem_core::trace::traceparent_of(&span);
    for t in &mut tasks {
        t.traceparent.clone_from(&traceparent);
    }
    let submitted = store_all(&st, tasks, now, |i| format!("items[{i}].idempotency_key"))
        .instrument(span)
        .await?;
    let items = submitted.into_iter().map(|s| s.task).collect();
    Ok((StatusCode::ACCEPTED, Json(TaskList { items })))
}
