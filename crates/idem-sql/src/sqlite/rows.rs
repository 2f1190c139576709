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

/// A task's columns as stored: what a row or a task's JSON form (`task_json!` in `tasks.rs`) holds,
/// decoded into a [`Task`] in one place.
#[derive(serde::Deserialize)]
pub(crate) struct TaskColumns {
    id: String,
    task: String,
    args: String,
    state: String,
    queue: String,
    priority: i64,
    attempts: i64,
    max_retries: i64,
    #[serde(deserialize_with = "real_text")]
    timeout_seconds: f64,
    idempotency_key: Option<String>,
    job_id: Option<String>,
    scheduled_at: i64,
    /// Not part of [`Task`]; claims order by it.
    pub(crate) run_at: i64,
    expires_at: Option<i64>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    result: Option<String>,
    error_kind: Option<String>,
    error_message: Option<String>,
    #[serde(default)]
    traceparent: Option<String>,
}

impl TaskColumns {
    fn of(row: &SqliteRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: get(row, "id")?,
            task: get(row, "task")?,
            args: get(row, "args")?,
            state: get(row, "state")?,
            queue: get(row, "queue")?,
            priority: get(row, "priority")?,
            attempts: get(row, "attempts")?,
            max_retries: get(row, "max_retries")?,
            timeout_seconds: get(row, "timeout_seconds")?,
            idempotency_key: get(row, "idempotency_key")?,
            job_id: get(row, "job_id")?,
            scheduled_at: get(row, "scheduled_at")?,
            run_at: get(row, "run_at")?,
            expires_at: get(row, "expires_at")?,
            created_at: get(row, "created_at")?,
            started_at: get(row, "started_at")?,
            finished_at: get(row, "finished_at")?,
            result: get(row, "result")?,
            error_kind: get(row, "error_kind")?,
            error_message: get(row, "error_message")?,
            traceparent: get(row, "traceparent")?,
        })
    }

    pub(crate) fn into_task(self) -> Result<Task, StoreError> {
        fn parse<T: std::str::FromStr>(col: &str, s: &str) -> Result<T, StoreError>
        where
            T::Err: std::fmt::Display,
        {
            s.parse().map_err(|e| corrupt(col, e))
        }
        let error = self.error_kind.map(|kind| ErrorInfo {
            kind,
            message: self.error_message.unwrap_or_default(),
        });
        let result = self
            .result
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("result", e)))
            .transpose()?;
        Ok(Task {
            id: parse("id", &self.id)?,
            task: parse("task", &self.task)?,
            args: serde_json::from_str(&self.args).map_err(|e| corrupt("args", e))?,
            state: parse("state", &self.state)?,
            queue: parse("queue", &self.queue)?,
            priority: self.priority as i16,
            attempts: self.attempts as i32,
            max_retries: self.max_retries as i32,
            timeout_seconds: self.timeout_seconds,
            idempotency_key: self
                .idempotency_key
                .map(|k| k.try_into().map_err(|e| corrupt("idempotency_key", e)))
                .transpose()?,
            job_id: self
                .job_id
                .map(|k| k.try_into().map_err(|e| corrupt("job_id", e)))
                .transpose()?,
            scheduled_at: from_ms(self.scheduled_at),
            expires_at: self.expires_at.map(from_ms),
            created_at: from_ms(self.created_at),
            started_at: self.started_at.map(from_ms),
            finished_at: self.finished_at.map(from_ms),
            result,
            traceparent: self.traceparent,
            error,
        })
    }
}

/// A REAL column in the JSON form: its value as text with 17 significant digits (every `f64`
/// round-trips through it; see the test below).
fn real_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

pub(crate) fn task(row: &SqliteRow) -> Result<Task, StoreError> {
    TaskColumns::of(row)?.into_task()
}

/// The tasks of a JSON array of task objects (`json_group_array(task_json!())`), with their columns'
/// `run_at`: one row for many tasks, where a row per task would cost a message from the connection's
/// thread each.
pub(crate) fn tasks_json(text: &str) -> Result<Vec<(Task, i64)>, StoreError> {
    let columns: Vec<TaskColumns> =
        serde_json::from_str(text).map_err(|e| corrupt("tasks (JSON)", e))?;
    columns
        .into_iter()
        .map(|c| {
            let run_at = c.run_at;
            Ok((c.into_task()?, run_at))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    /// `task_json!` renders the REAL column with `printf('%!.17g', …)`; JSON's and `CAST`'s own
    /// 15 digits lose bits for about 40 % of these values.
    #[tokio::test]
    async fn the_json_form_keeps_every_bit_of_a_real() {
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = match i % 3 {
                0 => f64::from_bits(x >> 1),
                1 => (x % 1_000_000_000) as f64 / 1e6,
                _ => (x % 3000) as f64 / 10.0 + 0.1 + 0.2,
            };
            if !v.is_finite() {
                continue;
            }
            let (text,): (String,) = sqlx::query_as("SELECT printf('%!.17g', ?1)")
                .bind(v)
                .fetch_one(&mut c)
                .await
                .unwrap();
            let back = super::real_text(serde_json::Value::String(text.clone())).unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v:?} went out as {text}");
        }
    }
}
