//! idem's HTTP API: jobs, tasks, workers, health, metrics, OpenAPI and `/docs`,
//! as one axum [`Router`] over a [`Store`]; and the operations listener's [`ops_router`] (health and
//! metrics only) with the dependency checks behind `idem_dependency_up`.
//!
//! Invariants: the store is the only way to data (the API keeps no state of its own beyond metrics);
//! every answer that is not a success is `application/problem+json` ([`ApiError`]), including
//! malformed bodies, unknown routes and wrong methods; no input makes a handler panic.

mod deadline;
pub mod dependencies;
mod docs;
mod error;
mod extract;
mod health;
mod job_spec;
mod jobs;
mod metrics;
mod pagination;
mod submit;
mod tasks;
mod validate;
mod workers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use idem_core::{Registry, Store};
use tower_http::trace::TraceLayer;

pub use dependencies::DependencyWatch;
pub use docs::openapi;
pub use error::{ApiError, FieldError, Problem};

/// A boxed, sendable future; the same type as `futures::future::BoxFuture`, so implementations may
/// use either name.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The body limit used when none is configured (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// The request timeout used when none is configured.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A dependency that `/health/ready` checks besides the store (a broker, Redis).
pub trait Probe: Send + Sync {
    /// The component's name as shown in the readiness answer (`"broker"`, `"redis"`).
    fn name(&self) -> &'static str;
    /// Answers `Ok` when the component is reachable; the error says why not. Bounded by the caller.
    fn check(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The source of truth for jobs, tasks, results and workers.
    pub store: Arc<dyn Store>,
    /// The registered tasks: a job or a submission naming anything else is refused with 422.
    pub registry: Arc<Registry>,
    /// Renders `/metrics`; `None` serves 404 there (no recorder installed in this process).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Readiness dependencies beyond the store, which is always probed.
    pub probes: Vec<Arc<dyn Probe>>,
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// A request still unanswered after this (plus a long-poll's wait) is answered 503.
    pub request_timeout: Duration,
    /// The idempotency cache (Redis), a fast path for replays; `None` asks the store every time.
    pub cache: Option<Arc<dyn idem_core::locks::IdempotencyCache>>,
}

impl AppState {
    /// A state with no metrics handle, no probes and the default body limit.
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>) -> Self {
        Self {
            store,
            registry,
            metrics: None,
            probes: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            cache: None,
        }
    }
}

/// Every route of the API with `state` applied: `/api/v1/...`, `/health*`, `/metrics`,
/// `/openapi.json` and `/docs`.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    if state.metrics.is_some() {
        metrics::register(&state.registry);
    }
    Router::new()
        .route("/api/v1/jobs", post(jobs::create).get(jobs::list))
        .route(
            "/api/v1/jobs/{id}",
            get(jobs::get).patch(jobs::patch).delete(jobs::delete),
        )
        .route("/api/v1/jobs/{id}/pause", post(jobs::pause))
        .route("/api/v1/jobs/{id}/resume", post(jobs::resume))
        .route("/api/v1/jobs/{id}/run", post(jobs::run))
        .route("/api/v1/jobs/{id}/runs", get(jobs::runs))
        .route("/api/v1/tasks", get(tasks::list))
        .route("/api/v1/tasks/submit", post(submit::submit))
        .route("/api/v1/tasks/submit/batch", post(submit::submit_batch))
        .route("/api/v1/tasks/{id}", get(tasks::get))
        .route("/api/v1/tasks/{id}/result", get(tasks::result))
        .route("/api/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/api/v1/workers", get(workers::list))
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::render))
        // Serves /openapi.json too: it must not be routed a second time.
        .merge(docs::swagger())
        // After every route is added: it applies to the routes present when called.
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            deadline::bound,
        ))
        .layer(axum::middleware::from_fn(metrics::track_http))
        // A panicking handler answers 500 (made a problem by the next layer), not a dropped connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(error::ensure_problem))
        // The limit is enforced (and mapped to a 413 problem) by the JSON extractor.
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(extract::BodyLimit(limit)))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_status),
        )
        .with_state(state)
}

/// The `http.request` span of one request: its method and route template (never the raw path,
/// which holds ids), continuing the caller's trace when the request carries a `traceparent`.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let span = tracing::info_span!("http.request", method = %req.method(), route,
        status = tracing::field::Empty, otel.kind = "server");
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    idem_core::trace::set_parent(&span, parent);
    span
}

fn record_status(
    res: &axum::http::Response<axum::body::Body>,
    latency: Duration,
    span: &tracing::Span,
) {
    span.record("status", res.status().as_u16());
    tracing::debug!(
        status = res.status().as_u16(),
        latency_ms = (latency.as_secs_f64() * 1e6).round() / 1e3,
        "request finished"
    );
}

/// The operations listener (`IDEM_OPS_BIND`): `/health`, `/health/live`, `/health/ready` and
/// `/metrics` with `state` applied — the API's handlers and probes, and nothing else. It serves no
/// data beyond health and metrics, so it needs no API keys; its `/metrics` does not read the store
/// (the store-read gauges are the API's). Every other path is a 404 problem.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::render_process))
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(error::ensure_problem))
        .with_state(state)
}
