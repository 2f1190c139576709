//! Decoding PostgreSQL rows into domain values, and encoding the values Postgres cannot store as
//! they are: the one place that knows the column types (timestamptz, jsonb, text ids).
//!
//! Invariant: what a store method writes, these functions read back equal — except U+0000, which no
//! Postgres `text` or `jsonb` value can hold and which is written as U+FFFD (see [`text`]).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use idem_core::job::JobSpec;
use idem_core::{ErrorInfo, FireRecord, Job, StoreError, Task, TaskId, Trigger, WorkerInfo};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Postgres, Row};

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A string Postgres can store: NUL characters, which `text` refuses, become U+FFFD. Without this a
/// handler's error message with a NUL in it could never be recorded, and its task never finished.
pub(super) fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// A JSON value Postgres can store as `jsonb`, which refuses `\u0000` in strings and keys: NULs
/// become U+FFFD. The value is copied only when it holds one.
pub(super) fn jsonb(v: &Value) -> Json<Cow<'_, Value>> {
    Json(if has_nul(v) {
        Cow::Owned(without_nul(v))
    } else {
        Cow::Borrowed(v)
    })
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn without_nul(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(text(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(without_nul).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (text(k).into_owned(), without_nul(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn get<'r, T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>>(
    row: &'r PgRow,
    col: &str,
) -> Result<T, StoreError> {
    row.try_get(col).map_err(|e| corrupt(col, e))
}

fn parse<T: std::str::FromStr>(row: &PgRow, col: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    get::<String>(row, col)?
        .parse()
        .map_err(|e| corrupt(col, e))
}

fn opt_parse<T: std::str::FromStr>(row: &PgRow, col: &str) -> Result<Option<T>, StoreError>
where
    T::Err: std::fmt::Display,
{
    get::<Option<String>>(row, col)?
        .map(|s| s.parse().map_err(|e| corrupt(col, e)))
        .transpose()
}

fn time(row: &PgRow, col: &str) -> Result<DateTime<Utc>, StoreError> {
    get(row, col)
}

fn opt_time(row: &PgRow, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    get(row, col)
}

pub(super) fn task(row: &PgRow) -> Result<Task, StoreError> {
    let error = match (
        get::<Option<String>>(row, "error_kind")?,
        get::<Option<String>>(row, "error_message")?,
    ) {
        (Some(kind), message) => Some(ErrorInfo {
            kind,
            message: message.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(Task {
        id: parse(row, "id")?,
        task: parse(row, "task")?,
        args: get(row, "args")?,
        state: parse(row, "state")?,
        queue: parse(row, "queue")?,
        priority: get(row, "priority")?,
        attempts: get(row, "attempts")?,
        max_retries: get(row, "max_retries")?,
        timeout_seconds: get(row, "timeout_seconds")?,
        idempotency_key: get::<Option<String>>(row, "idempotency_key")?
            .map(|k| k.try_into().map_err(|e| corrupt("idempotency_key", e)))
            .transpose()?,
        job_id: opt_parse(row, "job_id")?,
        scheduled_at: time(row, "scheduled_at")?,
        expires_at: opt_time(row, "expires_at")?,
        created_at: time(row, "created_at")?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        result: get(row, "result")?,
        error,
        traceparent: get(row, "traceparent")?,
    })
}

pub(super) fn job(row: &PgRow) -> Result<Job, StoreError> {
    let trigger: Trigger =
        serde_json::from_value(get(row, "trigger")?).map_err(|e| corrupt("trigger", e))?;
    Ok(Job {
        spec: JobSpec {
            id: parse(row, "id")?,
            name: get(row, "name")?,
            task: parse(row, "task")?,
            args: get(row, "args")?,
            trigger,
            misfire_grace_seconds: get(row, "misfire_grace_seconds")?,
            coalesce: get(row, "coalesce")?,
            max_instances: get(row, "max_instances")?,
            jitter_seconds: get(row, "jitter_seconds")?,
            queue: parse(row, "queue")?,
            priority: get(row, "priority")?,
            max_retries: get(row, "max_retries")?,
            timeout_seconds: get(row, "timeout_seconds")?,
            idempotency_ttl_seconds: get(row, "idempotency_ttl_seconds")?,
        },
        state: parse(row, "state")?,
        next_run_at: opt_time(row, "next_run_at")?,
        last_run_at: opt_time(row, "last_run_at")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        version: get(row, "version")?,
        quarantine_reason: get(row, "quarantine_reason")?,
    })
}

pub(super) fn fire(row: &PgRow) -> Result<FireRecord, StoreError> {
    Ok(FireRecord {
        job_id: parse(row, "job_id")?,
        scheduled_at: time(row, "scheduled_at")?,
        task_id: opt_parse::<TaskId>(row, "task_id")?,
        outcome: parse(row, "outcome")?,
        recorded_at: time(row, "recorded_at")?,
    })
}

pub(super) fn worker(row: &PgRow) -> Result<WorkerInfo, StoreError> {
    let count =
        |col| get::<i64>(row, col).and_then(|n| u32::try_from(n).map_err(|e| corrupt(col, e)));
    Ok(WorkerInfo {
        id: idem_core::WorkerId(get(row, "id")?),
        host: get(row, "host")?,
        queues: get::<Vec<String>>(row, "queues")?
            .into_iter()
            .map(|q| q.try_into().map_err(|e| corrupt("queues", e)))
            .collect::<Result<_, _>>()?,
        concurrency: count("concurrency")?,
        running: count("running")?,
        started_at: time(row, "started_at")?,
        last_heartbeat_at: time(row, "last_heartbeat_at")?,
    })
}
