//! `/api/v1/jobs`: create, list, read, change, pause, resume, delete, run now, and the run history
//! of scheduled jobs (SPEC §3).
//!
//! Invariant: every change goes through the store in one call, and `next_run_at` is recomputed
//! (`trigger.first_after(now)`) whenever the trigger changes or a job becomes active again, so the
//! scheduler never fires a slot from before the change or the pause.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use idem_core::job::JobSpec;
use idem_core::store::JobFilter;
use idem_core::task::Idempotency;
use idem_core::{
    FireRecord, IdempotencyKey, Job, JobId, JobState, NewTask, StoreError, Task, TaskId, TaskName,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, Problem};
use crate::extract::{idempotency_header, ApiJson, ApiQuery, PathId, IDEMPOTENT_REPLAYED};
use crate::job_spec::{merge_patch, validate, CreateJobRequest, PatchJobRequest, TriggerMode};
use crate::pagination::{encode_cursor, limit, page_request};
use crate::validate::Checker;
use crate::AppState;

/// `GET /api/v1/jobs` filters and page.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// Only jobs in this state.
    #[param(value_type = Option<JobState>)]
    pub state: Option<String>,
    /// Only jobs of this task.
    pub task: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /api/v1/jobs/{id}/runs` page size.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Number of fires, newest first, 1..=1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<Job>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A job's fire history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct FireList {
    pub items: Vec<FireRecord>,
}

/// The store's clock: due times are compared against it.
async fn now(st: &AppState) -> Result<DateTime<Utc>, ApiError> {
    Ok(st.store.now().await?)
}

/// A fresh job: active with its first fire, or finished when its trigger never fires.
fn new_job(spec: JobSpec, now: DateTime<Utc>) -> Job {
    let next_run_at = spec.trigger.first_after(now);
    Job {
        spec,
        state: if next_run_at.is_some() {
            JobState::Active
        } else {
            JobState::Finished
        },
        next_run_at,
        last_run_at: None,
        created_at: now,
        updated_at: now,
    }
}

/// Reads a job; a malformed id names no job, so it is a 404 like an unknown one.
async fn load(st: &AppState, raw: &str) -> Result<Job, ApiError> {
    let not_found = || ApiError::not_found(format!("job {raw:?} not found"));
    let id = JobId::try_from(raw).map_err(|_| not_found())?;
    st.store.get_job(&id).await?.ok_or_else(not_found)
}

async fn save(st: &AppState, job: Job) -> Result<Json<Job>, ApiError> {
    let id = job.spec.id.to_string();
    let saved = st.store.update_job(job).await?;
    // Deleted between the read and the write.
    saved
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {id:?} not found")))
}

/// Creates a job.
///
/// With an `Idempotency-Key` header, a retried creation is recognised by the job id: when a job with
/// the requested id exists and its definition equals the requested one, the answer is 200 with
/// `Idempotent-Replayed: true` and the stored job instead of 409. The key itself is not stored: a
/// retry without an explicit `id` cannot be recognised (each attempt generates a new id), so clients
/// that retry creations should choose the job's id.
#[utoipa::path(
    post, path = "/api/v1/jobs", tag = "jobs",
    request_body = CreateJobRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried creation of the same job answer 200 instead of 409")),
    responses(
        (status = 201, description = "Created", body = Job),
        (status = 200, description = "Replay of an identical creation (Idempotent-Replayed: true)", body = Job),
        (status = 409, description = "A job with this id exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateJobRequest>,
) -> Result<Response, ApiError> {
    let now = now(&st).await?;
    let key = idempotency_header(&headers)?;
    let raw_trigger = req.trigger.clone();
    let (spec, replace) = validate(req, &st.registry, TriggerMode::NormalizeAt(now))?;
    match st
        .store
        .create_job(new_job(spec.clone(), now), replace)
        .await
    {
        Ok(job) => Ok((StatusCode::CREATED, Json(job)).into_response()),
        Err(StoreError::JobExists(id)) if key.is_some() => {
            let existing = st.store.get_job(&id).await?;
            // The stored trigger was normalized when the job was created; normalizing the request's
            // at the same instant makes equal requests compare equal (an interval's default start).
            let same = existing.as_ref().is_some_and(|job| {
                let mut requested = spec.clone();
                raw_trigger
                    .normalize(job.created_at)
                    .map(|t| {
                        requested.trigger = t;
                        requested == job.spec
                    })
                    .unwrap_or(false)
            });
            match existing {
                Some(job) if same => {
                    Ok(([(IDEMPOTENT_REPLAYED, "true")], Json(job)).into_response())
                }
                _ => Err(StoreError::JobExists(id).into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Lists jobs, oldest first, a page at a time.
#[utoipa::path(
    get, path = "/api/v1/jobs", tag = "jobs", params(JobListQuery),
    responses(
        (status = 200, body = JobPage),
        (status = 400, description = "Bad cursor", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad filter or limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<JobListQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let mut c = Checker::new("");
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => s.parse::<JobState>().map_err(|e| c.push("state", e)).ok(),
        None => None,
    };
    let task = match q.task.filter(|s| !s.is_empty()) {
        Some(t) => c.id::<TaskName>("task", t),
        None => None,
    };
    let page = page_request(&mut c, q.limit.as_deref(), q.cursor.as_deref())?;
    c.finish()?;
    let page = st
        .store
        .list_jobs(&JobFilter { state, task }, &page)
        .await?;
    Ok(Json(JobPage {
        items: page.items,
        next_cursor: page.next_cursor.as_deref().map(encode_cursor),
    }))
}

/// Reads a job.
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses(
        (status = 200, body = Job),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(State(st): State<AppState>, PathId(id): PathId) -> Result<Json<Job>, ApiError> {
    load(&st, &id).await.map(Json)
}

/// Changes a job's definition. A changed trigger recomputes the next fire from now: an active or
/// finished job becomes active (or finished, when the new trigger never fires); a paused job stays
/// paused. An unchanged trigger keeps the state and the next fire.
#[utoipa::path(
    patch, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    request_body = PatchJobRequest,
    responses(
        (status = 200, body = Job),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch(
    State(st): State<AppState>,
    PathId(id): PathId,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Job>, ApiError> {
    let Value::Object(patch) = body else {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    };
    let now = now(&st).await?;
    let mut job = load(&st, &id).await?;
    let spec = merge_patch(&job.spec, patch, &st.registry, now)?;
    if spec.trigger != job.spec.trigger {
        let next = spec.trigger.first_after(now);
        job.next_run_at = next;
        if job.state != JobState::Paused {
            job.state = if next.is_some() {
                JobState::Active
            } else {
                JobState::Finished
            };
        }
    }
    job.spec = spec;
    job.updated_at = now;
    save(&st, job).await
}

/// Deletes a job; its unfinished tasks keep running.
#[utoipa::path(
    delete, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(st): State<AppState>,
    PathId(raw): PathId,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found(format!("job {raw:?} not found"));
    let id = JobId::try_from(raw.as_str()).map_err(|_| not_found())?;
    if st.store.delete_job(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

/// Pauses a job (idempotent: a paused or finished job is returned unchanged).
#[utoipa::path(
    post, path = "/api/v1/jobs/{id}/pause", tag = "jobs", params(("id" = String, Path)),
    responses(
        (status = 200, body = Job),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pause(State(st): State<AppState>, PathId(id): PathId) -> Result<Json<Job>, ApiError> {
    let mut job = load(&st, &id).await?;
    if job.state != JobState::Active {
        return Ok(Json(job));
    }
    job.state = JobState::Paused;
    job.updated_at = now(&st).await?;
    save(&st, job).await
}

/// Resumes a paused job from now: fires missed during the pause are not run. Idempotent on an
/// active job; 409 on a finished one.
#[utoipa::path(
    post, path = "/api/v1/jobs/{id}/resume", tag = "jobs", params(("id" = String, Path)),
    responses(
        (status = 200, body = Job),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is finished", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resume(State(st): State<AppState>, PathId(id): PathId) -> Result<Json<Job>, ApiError> {
    let mut job = load(&st, &id).await?;
    match job.state {
        JobState::Active => Ok(Json(job)),
        JobState::Finished => Err(ApiError::conflict("job is finished")),
        JobState::Paused => {
            let now = now(&st).await?;
            job.next_run_at = job.spec.trigger.first_after(now);
            job.state = if job.next_run_at.is_some() {
                JobState::Active
            } else {
                JobState::Finished
            };
            job.updated_at = now;
            save(&st, job).await
        }
    }
}

/// Fires the job now, outside its trigger: one task with the key `job:{id}:run:{uuid}`.
#[utoipa::path(
    post, path = "/api/v1/jobs/{id}/run", tag = "jobs", params(("id" = String, Path)),
    responses(
        (status = 202, body = Task),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn run(
    State(st): State<AppState>,
    PathId(id): PathId,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let job = load(&st, &id).await?;
    let now = now(&st).await?;
    let s = &job.spec;
    let key = IdempotencyKey::try_from(format!("job:{}:run:{}", s.id, uuid::Uuid::now_v7()))
        .map_err(|e| ApiError::internal(format!("manual run key: {e}")))?;
    let task = NewTask {
        id: TaskId::generate(),
        task: s.task.clone(),
        args: s.args.clone(),
        queue: s.queue.clone(),
        priority: s.priority,
        max_retries: s.max_retries,
        timeout_seconds: s.timeout_seconds,
        run_at: now,
        expires_at: None,
        job_id: Some(s.id.clone()),
        idempotency: Some(Idempotency {
            fingerprint: key.to_string(),
            key,
            ttl_seconds: s.idempotency_ttl_seconds,
        }),
    };
    let submitted = st.store.submit(vec![task], now).await?;
    let first = submitted
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("submit returned no task"))?;
    crate::metrics::count_submission(&first.task.task, first.replayed);
    Ok((StatusCode::ACCEPTED, Json(first.task)))
}

/// The job's fire history, newest first: `fired`, `missed` or `skipped_overlap`.
#[utoipa::path(
    get, path = "/api/v1/jobs/{id}/runs", tag = "jobs", params(("id" = String, Path), RunsQuery),
    responses(
        (status = 200, body = FireList),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn runs(
    State(st): State<AppState>,
    PathId(id): PathId,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Result<Json<FireList>, ApiError> {
    let mut c = Checker::new("");
    let limit = limit(&mut c, q.limit.as_deref());
    c.finish()?;
    let job = load(&st, &id).await?;
    let items = st.store.job_runs(&job.spec.id, limit).await?;
    Ok(Json(FireList { items }))
}
