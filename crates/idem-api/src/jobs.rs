//! `/api/v1/jobs`: create, list, read, change, pause, resume, delete, run now, and the run history
//! of scheduled jobs.
//!
//! Invariant: every change goes through the store in one call, and `next_run_at` is recomputed
//! (`trigger.first_after(now)`) whenever the trigger changes or a job becomes active again, so the
//! scheduler never fires a slot from before the change or the pause.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use idem_core::job::{check_plannable, JobSpec};
use idem_core::store::{Cas, JobFilter};
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
        version: 1,
        quarantine_reason: None,
    }
}

/// Parses a job id from the path; a malformed id names no job, so it is a 404 like an unknown one.
fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::try_from(raw).map_err(|_| not_found(raw))
}

fn not_found(raw: &str) -> ApiError {
    ApiError::not_found(format!("job {raw:?} not found"))
}

/// Reads a job.
async fn load(st: &AppState, raw: &str) -> Result<Job, ApiError> {
    st.store
        .get_job(&job_id(raw)?)
        .await?
        .ok_or_else(|| not_found(raw))
}

/// A job's entity tag: its version, which moves on with every write (API changes and fires).
fn etag(job: &Job) -> String {
    format!("\"{}\"", job.version)
}

/// A job as the answer's body, with its `ETag`.
fn with_etag(status: StatusCode, job: Job) -> Response {
    let tag = etag(&job);
    (status, [(header::ETAG, tag)], Json(job)).into_response()
}

/// An `If-Match` precondition (RFC 9110 §13.1.1, strong comparison).
enum IfMatch {
    /// `*`: any current version.
    Any,
    /// The versions the client accepts; a weak or foreign tag matches none.
    Versions(Vec<i64>),
}

impl IfMatch {
    fn from_headers(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
        let mut versions = Vec::new();
        let mut any = false;
        for value in headers.get_all(header::IF_MATCH) {
            let value = value
                .to_str()
                .map_err(|_| ApiError::bad_request("If-Match must be ASCII"))?;
            for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if tag == "*" {
                    any = true;
                } else if let Some(v) = tag
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .and_then(|t| t.parse::<i64>().ok())
                {
                    versions.push(v);
                } else if !tag.starts_with("W/\"") && !tag.starts_with('"') {
                    return Err(ApiError::bad_request(format!(
                        "If-Match: {tag:?} is not an entity tag (quote it: \"3\")"
                    )));
                }
            }
        }
        Ok(if any {
            Some(IfMatch::Any)
        } else if versions.is_empty() && headers.get(header::IF_MATCH).is_none() {
            None
        } else {
            Some(IfMatch::Versions(versions))
        })
    }

    fn check(&self, job: &Job) -> Result<(), ApiError> {
        match self {
            IfMatch::Versions(vs) if !vs.contains(&job.version) => {
                Err(ApiError::precondition_failed(format!(
                    "job {} is at version {}, not the one If-Match names",
                    job.spec.id,
                    etag(job)
                )))
            }
            _ => Ok(()),
        }
    }
}

/// How many times a change is re-applied to a freshly read job after another write (a fire, a
/// concurrent change) came between its read and its write.
const CAS_ATTEMPTS: usize = 8;

/// Applies `change` to the job read now and writes it compare-and-set on the version read, so a
/// write based on a stale read (a `PATCH` racing a `pause`) never lands. Without `If-Match` a lost
/// race re-reads and re-applies the change; with it, the race is the client's to see (412). `change`
/// returns `None` when the job needs no write (pause of a paused job).
async fn modify(
    st: &AppState,
    raw: &str,
    headers: &HeaderMap,
    mut change: impl FnMut(Job, DateTime<Utc>) -> Result<Option<Job>, ApiError>,
) -> Result<Response, ApiError> {
    let cond = IfMatch::from_headers(headers)?;
    for _ in 0..CAS_ATTEMPTS {
        let job = load(st, raw).await?;
        if let Some(cond) = &cond {
            cond.check(&job)?;
        }
        let read = job.version;
        let Some(changed) = change(job.clone(), now(st).await?)? else {
            return Ok(with_etag(StatusCode::OK, job));
        };
        match st.store.update_job(changed, read).await? {
            Cas::Done(saved) => return Ok(with_etag(StatusCode::OK, saved)),
            Cas::NotFound => return Err(not_found(raw)),
            Cas::Stale if matches!(cond, Some(IfMatch::Versions(_))) => {
                return Err(ApiError::precondition_failed(format!(
                    "job {raw:?} changed after the version If-Match names"
                )))
            }
            Cas::Stale => continue,
        }
    }
    Err(ApiError::conflict(format!(
        "job {raw:?} kept changing while this change was applied; send it again"
    )))
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
        (status = 201, description = "Created", body = Job, headers(("ETag" = String, description = "The job's version"))),
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
        Ok(job) => Ok(with_etag(StatusCode::CREATED, job)),
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
                    let tag = etag(&job);
                    Ok((
                        [
                            (
                                header::HeaderName::from_static(IDEMPOTENT_REPLAYED),
                                "true".to_owned(),
                            ),
                            (header::ETAG, tag),
                        ],
                        Json(job),
                    )
                        .into_response())
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
        (status = 200, body = Job, headers(("ETag" = String, description = "The job's version"))),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(State(st): State<AppState>, PathId(id): PathId) -> Result<Response, ApiError> {
    load(&st, &id)
        .await
        .map(|job| with_etag(StatusCode::OK, job))
}

/// Changes a job's definition. A changed trigger recomputes the next fire from now: an active,
/// finished or quarantined job becomes active (or finished, when the new trigger never fires); a
/// paused job stays paused. An unchanged trigger keeps the state and the next fire.
///
/// The write is compare-and-set on the job's version: a change that raced another write (a pause,
/// a fire) is re-applied to the fresh job, never written over it. With `If-Match`, the change is
/// applied only to that version (412 otherwise).
#[utoipa::path(
    patch, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Apply only while the job's ETag is one of these (or *); else 412")),
    request_body = PatchJobRequest,
    responses(
        (status = 200, body = Job, headers(("ETag" = String, description = "The job's version"))),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job kept changing while the change was applied", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch(
    State(st): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let Value::Object(patch) = body else {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    };
    modify(&st, &id, &headers, |mut job, now| {
        let spec = merge_patch(&job.spec, patch.clone(), &st.registry, now)?;
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
        Ok(Some(job))
    })
    .await
}

/// Deletes a job; its unfinished tasks keep running.
#[utoipa::path(
    delete, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Apply only while the job's ETag is one of these (or *); else 412")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(st): State<AppState>,
    PathId(raw): PathId,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = job_id(&raw)?;
    let expected = match IfMatch::from_headers(&headers)? {
        None | Some(IfMatch::Any) => None,
        Some(cond @ IfMatch::Versions(_)) => {
            let job = load(&st, &raw).await?;
            cond.check(&job)?;
            Some(job.version)
        }
    };
    match st.store.delete_job(&id, expected).await? {
        Cas::Done(()) => Ok(StatusCode::NO_CONTENT),
        Cas::NotFound => Err(not_found(&raw)),
        Cas::Stale => Err(ApiError::precondition_failed(format!(
            "job {raw:?} changed after the version If-Match names"
        ))),
    }
}

/// Pauses a job (idempotent: a paused or finished job is returned unchanged).
#[utoipa::path(
    post, path = "/api/v1/jobs/{id}/pause", tag = "jobs", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Apply only while the job's ETag is one of these (or *); else 412")),
    responses(
        (status = 200, body = Job, headers(("ETag" = String, description = "The job's version"))),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job kept changing while the change was applied", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pause(
    State(st): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    modify(&st, &id, &headers, |mut job, now| {
        if job.state != JobState::Active {
            return Ok(None);
        }
        job.state = JobState::Paused;
        job.updated_at = now;
        Ok(Some(job))
    })
    .await
}

/// Resumes a paused (or quarantined) job from now: fires missed during the pause are not run.
/// Idempotent on an active job; 409 on a finished one, and on a quarantined one whose trigger is
/// still invalid (change it with `PATCH`).
#[utoipa::path(
    post, path = "/api/v1/jobs/{id}/resume", tag = "jobs", params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "Apply only while the job's ETag is one of these (or *); else 412")),
    responses(
        (status = 200, body = Job, headers(("ETag" = String, description = "The job's version"))),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The job is finished, or quarantined with an invalid trigger", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resume(
    State(st): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    modify(&st, &id, &headers, |mut job, now| match job.state {
        JobState::Active => Ok(None),
        JobState::Finished => Err(ApiError::conflict("job is finished")),
        JobState::Paused | JobState::Quarantined => {
            if job.state == JobState::Quarantined {
                check_plannable(&job).map_err(|reason| {
                    ApiError::conflict(format!(
                        "job is quarantined and its trigger is still invalid ({reason}); \
                         change it with PATCH"
                    ))
                })?;
            }
            job.next_run_at = job.spec.trigger.first_after(now);
            job.state = if job.next_run_at.is_some() {
                JobState::Active
            } else {
                JobState::Finished
            };
            job.updated_at = now;
            Ok(Some(job))
        }
    })
    .await
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
        traceparent: idem_core::trace::current_traceparent(),
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
    crate::metrics::count_submissions([(&first.task.task, first.replayed)]);
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
