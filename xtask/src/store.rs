//! The store's own records, read straight from the run's PostgreSQL database with sqlx (not through
//! the API, which could hide what the tables hold): tasks, fire history, which tasks a worker
//! process holds; and a watcher that polls final states during the run, so a final state that later
//! changes — a second completion — is seen even if the last write looks fine.
//!
//! Invariant: these are read-only queries; the runner never writes to idem's tables.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

/// A pool to the run's database for the oracle's reads (small: it only reads).
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?)
}

#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: String,
    pub key: Option<String>,
    pub state: String,
    pub attempts: i32,
    pub job_id: Option<String>,
    pub result: Option<Value>,
    pub error_kind: Option<String>,
}

pub fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled" | "expired")
}

pub async fn tasks(pool: &PgPool) -> anyhow::Result<Vec<TaskRow>> {
    let rows = sqlx::query(
        "SELECT id, idempotency_key, state, attempts, job_id, result, error_kind FROM tasks",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(TaskRow {
                id: r.try_get("id")?,
                key: r.try_get("idempotency_key")?,
                state: r.try_get("state")?,
                attempts: r.try_get("attempts")?,
                job_id: r.try_get("job_id")?,
                result: r.try_get("result")?,
                error_kind: r.try_get("error_kind")?,
            })
        })
        .collect()
}

/// How many tasks are not final yet.
pub async fn unfinished(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM tasks WHERE state NOT IN ('succeeded','failed','cancelled','expired')",
    )
    .fetch_one(pool)
    .await?)
}

#[derive(Debug, Clone)]
pub struct RunRow {
    pub job_id: String,
    pub scheduled_at: DateTime<Utc>,
    pub task_id: Option<String>,
    pub outcome: String,
    pub recorded_at: DateTime<Utc>,
}

pub async fn job_runs(pool: &PgPool) -> anyhow::Result<Vec<RunRow>> {
    let rows =
        sqlx::query("SELECT job_id, scheduled_at, task_id, outcome, recorded_at FROM job_runs")
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|r| {
            Ok(RunRow {
                job_id: r.try_get("job_id")?,
                scheduled_at: r.try_get("scheduled_at")?,
                task_id: r.try_get("task_id")?,
                outcome: r.try_get("outcome")?,
                recorded_at: r.try_get("recorded_at")?,
            })
        })
        .collect()
}

/// The running tasks whose lease a worker process holds: (task id, attempt). A worker's id is
/// `{host}:{pid}:{random}`, so its pid names it.
pub async fn running_on(pool: &PgPool, pid: u32) -> anyhow::Result<Vec<(String, i32)>> {
    let pattern = format!("%:{pid}:%");
    let rows = sqlx::query(
        "SELECT id, attempts FROM tasks WHERE state = 'running' AND lease_owner LIKE $1",
    )
    .bind(pattern)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("attempts")?)))
        .collect()
}

/// (state, attempts) of some tasks.
pub async fn states_of(
    pool: &PgPool,
    ids: &[String],
) -> anyhow::Result<HashMap<String, (String, i32)>> {
    let rows = sqlx::query("SELECT id, state, attempts FROM tasks WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                (r.try_get("state")?, r.try_get("attempts")?),
            ))
        })
        .collect()
}

/// What a final task looked like when the watcher first saw it.
#[derive(Debug, Clone, PartialEq)]
struct Final {
    state: String,
    attempts: i32,
    finished_at: Option<DateTime<Utc>>,
    result: Option<String>,
}

/// Polls every task in a final state and remembers the first version seen; any later difference is
/// a second completion of a task.
#[derive(Clone, Default)]
pub struct FinalWatcher {
    seen: Arc<Mutex<HashMap<String, Final>>>,
    changes: Arc<Mutex<Vec<String>>>,
    polls: Arc<Mutex<(u64, u64)>>,
}

impl FinalWatcher {
    /// Polls every `every` until `stop`.
    pub fn spawn(&self, pool: PgPool, every: Duration, stop: CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.poll_once(&pool).await;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
    }

    pub async fn poll_once(&self, pool: &PgPool) {
        let rows = sqlx::query(
            "SELECT id, state, attempts, finished_at, result::text AS result FROM tasks \
             WHERE state IN ('succeeded','failed','cancelled','expired')",
        )
        .fetch_all(pool)
        .await;
        let Ok(rows) = rows else {
            self.polls.lock().unwrap().1 += 1;
            return;
        };
        self.polls.lock().unwrap().0 += 1;
        let mut seen = self.seen.lock().unwrap();
        for r in rows {
            let (Ok(id), Ok(state), Ok(attempts), Ok(finished_at), Ok(result)) = (
                r.try_get::<String, _>("id"),
                r.try_get::<String, _>("state"),
                r.try_get::<i32, _>("attempts"),
                r.try_get::<Option<DateTime<Utc>>, _>("finished_at"),
                r.try_get::<Option<String>, _>("result"),
            ) else {
                continue;
            };
            let now = Final {
                state,
                attempts,
                finished_at,
                result,
            };
            match seen.get(&id) {
                None => {
                    seen.insert(id, now);
                }
                Some(first) if *first != now => {
                    self.changes
                        .lock()
                        .unwrap()
                        .push(format!("task {id}: final {first:?} later became {now:?}"));
                    seen.insert(id, now);
                }
                Some(_) => {}
            }
        }
        // A task that was final and is no longer final shows up as missing from `rows`; the final
        // check compares the end state with `seen` for those.
    }

    /// Final states that changed, including ones seen final that are not final at the end.
    pub fn changes(&self, end: &[TaskRow]) -> Vec<String> {
        let mut out = self.changes.lock().unwrap().clone();
        let seen = self.seen.lock().unwrap();
        for t in end {
            if let Some(first) = seen.get(&t.id) {
                if !is_final(&t.state) {
                    out.push(format!(
                        "task {}: was {} and is {} at the end",
                        t.id, first.state, t.state
                    ));
                }
            }
        }
        out
    }
}
