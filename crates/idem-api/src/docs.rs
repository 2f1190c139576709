//! The OpenAPI document, generated from the handlers' annotations, and the Swagger UI at `/docs`,
//! served from the binary (no CDN).
//!
//! Invariant: `/openapi.json` is routed once, by the Swagger UI router, from [`openapi`]: the
//! document served is the one the code describes.

use axum::Router;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{FieldError, Problem};
use crate::{health, job_spec, jobs, metrics, submit, tasks, workers, AppState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "idem",
        description = "An idempotent, distributed task scheduler: scheduled jobs, immediate tasks \
                       with idempotency keys, and their results. Every error is \
                       application/problem+json (RFC 9457)."
    ),
    paths(
        jobs::create, jobs::list, jobs::get, jobs::patch, jobs::delete,
        jobs::pause, jobs::resume, jobs::run, jobs::runs,
        submit::submit, submit::submit_batch,
        tasks::get, tasks::result, tasks::cancel, tasks::list,
        workers::list,
        health::health, health::live, health::ready,
        metrics::render,
    ),
    components(schemas(
        job_spec::CreateJobRequest, job_spec::PatchJobRequest, jobs::JobPage, jobs::FireList,
        submit::SubmitTaskRequest, submit::SubmitBatchRequest, submit::TaskList,
        tasks::TaskPage, tasks::TaskResult, workers::WorkerList, health::Health,
        Problem, FieldError,
        idem_core::Job, idem_core::JobSpec, idem_core::JobState, idem_core::Trigger,
        idem_core::FireRecord, idem_core::FireOutcome, idem_core::Task, idem_core::TaskState,
        idem_core::ErrorInfo, idem_core::WorkerInfo,
    )),
    tags(
        (name = "jobs", description = "Scheduled jobs"),
        (name = "tasks", description = "Immediate and delayed tasks"),
        (name = "workers", description = "Worker processes"),
        (name = "health", description = "Health, readiness and metrics"),
    )
)]
struct ApiDoc;

/// The OpenAPI 3.1 document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `/docs` (Swagger UI) and `/openapi.json`.
pub fn swagger() -> Router<AppState> {
    SwaggerUi::new("/docs")
        .url("/openapi.json", openapi())
        .into()
}
