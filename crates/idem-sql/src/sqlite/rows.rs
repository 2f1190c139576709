//! Decoding SQLite rows into domain values; the one place that knows the column encodings
//! (INTEGER milliseconds, JSON as TEXT).

use chrono::{DateTime, Utc};
use idem_core::job::JobSpec;
use idem_core::time::from_ms;
use idem_core::{ErrorInfo, FireRecord, Job, StoreError, Task, TaskId, Trigger, WorkerInfo};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn get<'r, T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>>(
    row: &'r SqliteRow,
    col: &str,
) -> Result<T, StoreError> {
    row.try_get(col).map_err(|e| corrupt(col, e))
}

fn time(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>, StoreError> {
    Ok(from_ms(get::<i64>(row, col)?))
}

fn opt_time(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(get::<Option<i64>>(row, col)?.map(from_ms))
}

fn parse<T: std::str::FromStr>(row: &SqliteRow, col: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    get::<String>(row, col)?
        .parse()
        .map_err(|e| corrupt(col, e))
}

fn json(row: &SqliteRow, col: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(&get::<String>(row, col)?).map_err(|e| corrupt(col, e))
}

pub(crate) fn task(row: &SqliteRow) -> Result<Task, StoreError> {
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
    let result = get::<Option<String>>(row, "result")?
        .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("result", e)))
        .transpose()?;
    Ok(Task {
        id: parse(row, "id")?,
        task: parse(row, "task")?,
        args: json(row, "args")?,
        state: parse(row, "state")?,
        queue: parse(row, "queue")?,
        priority: get::<i64>(row, "priority")? as i16,
        attempts: get::<i64>(row, "attempts")? as i32,
        max_retries: get::<i64>(row, "max_retries")? as i32,
        timeout_seconds: get(row, "timeout_seconds")?,
        idempotency_key: get::<Option<String>>(row, "idempotency_key")?
            .map(|k| k.try_into().map_err(|e| corrupt("idempotency_key", e)))
            .transpose()?,
        job_id: get::<Option<String>>(row, "job_id")?
            .map(|k| k.try_into().map_err(|e| corrupt("job_id", e)))
            .transpose()?,
        scheduled_at: time(row, "scheduled_at")?,
        expires_at: opt_time(row, "expires_at")?,
        created_at: time(row, "created_at")?,
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        result,
        error,
    })
}

pub(crate) fn job(row: &SqliteRow) -> Result<Job, StoreError> {
    let trigger: Trigger =
        serde_json::from_str(&get::<String>(row, "trigger")?).map_err(|e| corrupt("trigger", e))?;
    Ok(Job {
        spec: JobSpec {
            id: parse(row, "id")?,
            name: get(row, "name")?,
            task: parse(row, "task")?,
            args: json(row, "args")?,
            trigger,
            misfire_grace_seconds: get(row, "misfire_grace_seconds")?,
            coalesce: get::<i64>(row, "coalesce")? != 0,
            max_instances: get::<i64>(row, "max_instances")? as i32,
            jitter_seconds: get(row, "jitter_seconds")?,
            queue: parse(row, "queue")?,
            priority: get::<i64>(row, "priority")? as i16,
            max_retries: get::<i64>(row, "max_retries")? as i32,
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

pub(crate) fn fire(row: &SqliteRow) -> Result<FireRecord, StoreError> {
    Ok(FireRecord {
        job_id: parse(row, "job_id")?,
        scheduled_at: time(row, "scheduled_at")?,
        task_id: get::<Option<String>>(row, "task_id")?
            .map(|s| s.parse::<TaskId>().map_err(|e| corrupt("task_id", e)))
            .transpose()?,
        outcome: parse(row, "outcome")?,
        recorded_at: time(row, "recorded_at")?,
    })
}

pub(crate) fn worker(row: &SqliteRow) -> Result<WorkerInfo, StoreError> {
    let queues: Vec<String> =
        serde_json::from_str(&get::<String>(row, "queues")?).map_err(|e| corrupt("queues", e))?;
    Ok(WorkerInfo {
        id: idem_core::WorkerId(get(row, "id")?),
        host: get(row, "host")?,
        queues: queues
            .into_iter()
            .map(|q| q.try_into().map_err(|e| corrupt("queues", e)))
            .collect::<Result<_, _>>()?,
        concurrency: get::<i64>(row, "concurrency")? as u32,
        running: get::<i64>(row, "running")? as u32,
        started_at: time(row, "started_at")?,
        last_heartbeat_at: time(row, "last_heartbeat_at")?,
    })
}
