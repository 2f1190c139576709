//! The job request bodies and their validation into a [`JobSpec`].
//!
//! Invariant: creation and PATCH validate through the same function — a PATCH is merged onto the
//! stored spec first — so a stored job always satisfies the rules that creating it would check.

use chrono::{DateTime, Utc};
use idem_core::job::JobSpec;
use idem_core::{JobId, QueueName, Registry, Trigger};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::decode;
use crate::validate::{Checker, Min, TEN_YEARS_SECONDS};

/// `POST /api/v1/jobs`. Absent (or `null`) options take the defaults shown.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    /// `[A-Za-z0-9_.:-]{1,128}`; a UUIDv7 is generated when absent.
    #[schema(example = "nightly-report")]
    pub id: Option<String>,
    pub name: Option<String>,
    /// A registered task name.
    #[schema(example = "echo")]
    pub task: String,
    /// The task's arguments, any JSON (default `null`).
    #[serde(default)]
    pub args: Value,
    pub trigger: Trigger,
    /// A fire later than this is skipped and recorded as missed (>= 0).
    #[schema(default = 60.0)]
    pub misfire_grace_seconds: Option<f64>,
    /// Several overdue fires run once (the latest).
    #[schema(default = true)]
    pub coalesce: Option<bool>,
    /// A fire is skipped while this many of the job's tasks are unfinished (1..=1000).
    #[schema(default = 1)]
    pub max_instances: Option<i64>,
    /// Random delay added to each fire, in [0, jitter) (0..=86400).
    #[schema(default = 0.0)]
    pub jitter_seconds: Option<f64>,
    #[schema(default = "default")]
    pub queue: Option<String>,
    /// 0..=9, higher first.
    #[schema(default = 0)]
    pub priority: Option<i64>,
    /// Retries after the first attempt (0..=100).
    #[schema(default = 3)]
    pub max_retries: Option<i64>,
    /// Per attempt (> 0, at most 604800).
    #[schema(default = 300.0)]
    pub timeout_seconds: Option<f64>,
    /// How long each fire's idempotency key is kept (> 0, at most 31536000).
    #[schema(default = 86400.0)]
    pub idempotency_ttl_seconds: Option<f64>,
    /// Replace a job with the same id instead of answering 409.
    #[schema(default = false)]
    pub replace_existing: Option<bool>,
}

/// `PATCH /api/v1/jobs/{id}`: any field of the job's definition except `id`; absent fields keep
/// their value, `null` resets a field to its default (and clears `name`). A `trigger` or `args`
/// given replaces the stored one whole (no deep merge).
// Documentation only: the handler merges the raw object onto the stored spec and validates the
// result as a `CreateJobRequest`, so this type is never built.
#[allow(dead_code)]
#[derive(Debug, ToSchema)]
pub struct PatchJobRequest {
    pub name: Option<String>,
    pub task: Option<String>,
    pub args: Option<Value>,
    pub trigger: Option<Trigger>,
    pub misfire_grace_seconds: Option<f64>,
    pub coalesce: Option<bool>,
    pub max_instances: Option<i64>,
    pub jitter_seconds: Option<f64>,
    pub queue: Option<String>,
    pub priority: Option<i64>,
    pub max_retries: Option<i64>,
    pub timeout_seconds: Option<f64>,
    pub idempotency_ttl_seconds: Option<f64>,
}

/// How the trigger of a request is treated.
pub enum TriggerMode {
    /// Normalize it at this instant (a new or changed trigger).
    NormalizeAt(DateTime<Utc>),
    /// Take it as stored (a PATCH that does not touch it).
    Keep,
}

/// Validates a job request; every invalid field is reported at once. Returns the spec and
/// `replace_existing`.
pub fn validate(
    req: CreateJobRequest,
    registry: &Registry,
    trigger_mode: TriggerMode,
) -> Result<(JobSpec, bool), ApiError> {
    let mut c = Checker::new("");
    let id = match req.id {
        Some(id) => c.id::<JobId>("id", id),
        None => Some(JobId::generate()),
    };
    let task = c.task("task", req.task, registry);
    let queue = c.id::<QueueName>("queue", req.queue.unwrap_or_else(|| "default".into()));
    let trigger = match trigger_mode {
        TriggerMode::Keep => Some(req.trigger),
        TriggerMode::NormalizeAt(now) => match req.trigger.normalize(now) {
            Ok(t) => Some(t),
            Err(e) => {
                // The trigger names its fields from the body's root ("trigger.expr").
                c.push(e.field, e.message);
                None
            }
        },
    };
    let misfire_grace_seconds = c.seconds(
        "misfire_grace_seconds",
        req.misfire_grace_seconds,
        60.0,
        Min::Zero,
        TEN_YEARS_SECONDS,
    );
    let jitter_seconds = c.seconds(
        "jitter_seconds",
        req.jitter_seconds,
        0.0,
        Min::Zero,
        86_400.0,
    );
    let timeout_seconds = c.seconds(
        "timeout_seconds",
        req.timeout_seconds,
        300.0,
        Min::Positive,
        604_800.0,
    );
    let idempotency_ttl_seconds = c.seconds(
        "idempotency_ttl_seconds",
        req.idempotency_ttl_seconds,
        86_400.0,
        Min::Positive,
        31_536_000.0,
    );
    let max_instances = c.int("max_instances", req.max_instances, 1, 1..=1000) as i32;
    let priority = c.int("priority", req.priority, 0, 0..=9) as i16;
    let max_retries = c.int("max_retries", req.max_retries, 3, 0..=100) as i32;
    c.finish()?;
    match (id, task, queue, trigger) {
        (Some(id), Some(task), Some(queue), Some(trigger)) => Ok((
            JobSpec {
                id,
                name: req.name,
                task,
                args: req.args,
                trigger,
                misfire_grace_seconds,
                coalesce: req.coalesce.unwrap_or(true),
                max_instances,
                jitter_seconds,
                queue,
                priority,
                max_retries,
                timeout_seconds,
                idempotency_ttl_seconds,
            },
            req.replace_existing.unwrap_or(false),
        )),
        // The checker saw every failure above; this arm only satisfies the types.
        _ => Err(ApiError::invalid("body", "invalid job")),
    }
}

/// Merges a PATCH body onto a stored spec and validates the result. Fails on `id` (unless it
/// repeats the job's id) and on `replace_existing`, which are not part of a job's definition.
pub fn merge_patch(
    stored: &JobSpec,
    patch: Map<String, Value>,
    registry: &Registry,
    now: DateTime<Utc>,
) -> Result<JobSpec, ApiError> {
    let mut c = Checker::new("");
    if let Some(id) = patch.get("id") {
        if id.as_str() != Some(stored.id.as_str()) {
            c.push("id", "a job's id cannot be changed");
        }
    }
    if patch.contains_key("replace_existing") {
        c.push(
            "replace_existing",
            "unknown field `replace_existing` in a PATCH",
        );
    }
    c.finish()?;
    let trigger_changed = patch.contains_key("trigger");
    let mut merged = match serde_json::to_value(stored) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Err(ApiError::internal(
                "a job spec did not serialize to an object",
            ))
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    merged.extend(patch);
    let req: CreateJobRequest = decode(Value::Object(merged), "")?;
    let mode = if trigger_changed {
        TriggerMode::NormalizeAt(now)
    } else {
        TriggerMode::Keep
    };
    validate(req, registry, mode).map(|(spec, _)| spec)
}
