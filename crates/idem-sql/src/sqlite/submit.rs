//! A group of one-task submissions decided and written set-wise: one read of every key the group
//! names, one read of the tasks those keys point to, one insert of every new task and one upsert of
//! every new key — four statements for the group instead of up to three per submission, each a
//! round trip to the writer's thread.
//!
//! Invariant: each submission gets the answer it would get if the group's submissions ran one after
//! the other, in order, each as a lone `submit` (`tasks::submit_one`): a live key with the same
//! fingerprint replays its task (also a task made earlier in the same group), with another
//! fingerprint is a conflict that writes nothing, and a new or expired key — or a live one whose
//! task is gone — makes a new task and (re)points the key at it. The caller runs it inside one
//! `BEGIN IMMEDIATE` transaction, so no other writer comes between the reads and the writes.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use idem_core::time::chrono_secs;
use idem_core::{NewTask, StoreError, Submitted, Task, TaskId, TaskState};
use sqlx::SqliteConnection;

use super::{ms, rows};
use crate::db_err;

/// What a submission of the group turned out to be.
enum Decision {
    /// A new task.
    New,
    /// A replay of a task that was in the store before the group.
    Stored(TaskId),
    /// A replay of the new task of an earlier submission of the group.
    Earlier(TaskId),
    Conflict(String),
}

/// The record a key has, as the group sees it at each step.
struct KeyRecord {
    fingerprint: String,
    task_id: TaskId,
    expires_at: i64,
    /// Whether the task is one this group makes (else it was in the store before).
    made_here: bool,
}

/// Decides and writes `items` (each task with the `now` of its submission) in the caller's
/// transaction; answers in order. A conflict is that submission's answer (`KeyConflict` with
/// index 0, as a lone submission's); the outer error means the transaction must not commit.
pub(super) async fn submit_group(
    tx: &mut SqliteConnection,
    items: &[(&NewTask, DateTime<Utc>)],
) -> Result<Vec<Result<Submitted, StoreError>>, StoreError> {
    let keys: Vec<&str> = items
        .iter()
        .filter_map(|(t, _)| t.idempotency.as_ref().map(|i| i.key.as_str()))
        .collect();
    let mut known = if keys.is_empty() {
        HashMap::new()
    } else {
        stored_keys(tx, &keys).await?
    };
    let stored_tasks = if known.is_empty() {
        HashMap::new()
    } else {
        let ids: Vec<TaskId> = known.values().map(|r| r.task_id).collect();
        tasks_by_id(tx, &ids).await?
    };

    let mut decisions = Vec::with_capacity(items.len());
    let mut new: Vec<(&NewTask, DateTime<Utc>)> = Vec::new();
    for (t, now) in items {
        let Some(idem) = &t.idempotency else {
            decisions.push(Decision::New);
            new.push((t, *now));
            continue;
        };
        let live = known
            .get(idem.key.as_str())
            .filter(|r| r.expires_at > ms(*now));
        let decision = match live {
            Some(r) if r.fingerprint != idem.fingerprint => {
                Decision::Conflict(idem.key.to_string())
            }
            Some(r) if r.made_here => Decision::Earlier(r.task_id),
            Some(r) if stored_tasks.contains_key(&r.task_id) => Decision::Stored(r.task_id),
            // No live record, or its task is gone: a new task, which the key now names.
            _ => Decision::New,
        };
        if let Decision::New = decision {
            known.insert(
                idem.key.to_string(),
                KeyRecord {
                    fingerprint: idem.fingerprint.clone(),
                    task_id: t.id,
                    expires_at: ms(*now + chrono_secs(idem.ttl_seconds)),
                    made_here: true,
                },
            );
            new.push((t, *now));
        }
        decisions.push(decision);
    }

    let inserted = insert_tasks(tx, &new).await?;
    upsert_keys(tx, &new).await?;

    let mut out = Vec::with_capacity(items.len());
    for ((t, _), decision) in items.iter().zip(decisions) {
        out.push(match decision {
            Decision::New => Ok(Submitted {
                task: replayed(&inserted, t.id)?,
                replayed: false,
            }),
            // A task may be replayed more than once: cloned, never taken. The replay of a task
            // this group made answers it as inserted, as a later lone submission would read it.
            Decision::Earlier(id) => Ok(Submitted {
                task: replayed(&inserted, id)?,
                replayed: true,
            }),
            Decision::Stored(id) => Ok(Submitted {
                task: replayed(&stored_tasks, id)?,
                replayed: true,
            }),
            Decision::Conflict(key) => Err(StoreError::KeyConflict { index: 0, key }),
        });
    }
    Ok(out)
}

/// The answer's copy of task `id`, which the group inserted or read.
fn replayed(tasks: &HashMap<TaskId, Task>, id: TaskId) -> Result<Task, StoreError> {
    tasks
        .get(&id)
        .cloned()
        .ok_or_else(|| StoreError::Corrupt(format!("task {id} was neither inserted nor read")))
}

/// The records of `keys`, live or not (liveness depends on each submission's `now`).
async fn stored_keys(
    tx: &mut SqliteConnection,
    keys: &[&str],
) -> Result<HashMap<String, KeyRecord>, StoreError> {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT key, fingerprint, task_id, expires_at FROM idempotency_keys
         WHERE key IN (SELECT value FROM json_each(?1))",
    )
    .bind(serde_json::to_string(keys).expect("strings serialize"))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    rows.into_iter()
        .map(|(key, fingerprint, task_id, expires_at)| {
            let task_id = task_id.parse().map_err(|e| rows::corrupt("task_id", e))?;
            Ok((
                key,
                KeyRecord {
                    fingerprint,
                    task_id,
                    expires_at,
                    made_here: false,
                },
            ))
        })
        .collect()
}

async fn tasks_by_id(
    tx: &mut SqliteConnection,
    ids: &[TaskId],
) -> Result<HashMap<TaskId, Task>, StoreError> {
    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let found = sqlx::query("SELECT * FROM tasks WHERE id IN (SELECT value FROM json_each(?1))")
        .bind(serde_json::to_string(&ids).expect("strings serialize"))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
    found
        .iter()
        .map(|row| rows::task(row).map(|t| (t.id, t)))
        .collect()
}

/// Inserts the new tasks, each created at its submission's `now`, with one `INSERT … SELECT FROM
/// json_each`.
async fn insert_tasks(
    tx: &mut SqliteConnection,
    new: &[(&NewTask, DateTime<Utc>)],
) -> Result<HashMap<TaskId, Task>, StoreError> {
    if new.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<serde_json::Value> = new
        .iter()
        .map(|(t, now)| {
            let state = if t.run_at > *now {
                TaskState::Scheduled
            } else {
                TaskState::Queued
            };
            serde_json::json!({
                "id": t.id.to_string(),
                "task": t.task.as_str(),
                "args": t.args.to_string(),
                "state": state.as_str(),
                "queue": t.queue.as_str(),
                "priority": t.priority,
                "max_retries": t.max_retries,
                "timeout_seconds": t.timeout_seconds,
                "idempotency_key": t.idempotency.as_ref().map(|i| i.key.as_str()),
                "job_id": t.job_id.as_ref().map(|j| j.as_str()),
                "run_at": ms(t.run_at),
                "expires_at": t.expires_at.map(ms),
                "created_at": ms(*now),
                "traceparent": t.traceparent.as_deref(),
            })
        })
        .collect();
    let inserted = sqlx::query(
        "INSERT INTO tasks (id, task, args, state, queue, priority, attempts, max_retries,
             timeout_seconds, idempotency_key, job_id, scheduled_at, run_at, expires_at, created_at,
             traceparent)
         SELECT v ->> 'id', v ->> 'task', v ->> 'args', v ->> 'state', v ->> 'queue',
             v ->> 'priority', 0, v ->> 'max_retries', v ->> 'timeout_seconds',
             v ->> 'idempotency_key', v ->> 'job_id', v ->> 'run_at', v ->> 'run_at',
             v ->> 'expires_at', v ->> 'created_at', v ->> 'traceparent'
         FROM (SELECT value AS v FROM json_each(?1))
         RETURNING *",
    )
    .bind(serde_json::Value::Array(rows).to_string())
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    inserted
        .iter()
        .map(|row| rows::task(row).map(|t| (t.id, t)))
        .collect()
}

/// Points each new task's key at it (replacing an expired record, or one whose task is gone),
/// with one upsert; a key repeated in `new` ends as its last submission set it, as one after the
/// other would.
async fn upsert_keys(
    tx: &mut SqliteConnection,
    new: &[(&NewTask, DateTime<Utc>)],
) -> Result<(), StoreError> {
    let rows: Vec<serde_json::Value> = new
        .iter()
        .filter_map(|(t, now)| {
            let idem = t.idempotency.as_ref()?;
            Some(serde_json::json!({
                "key": idem.key.as_str(),
                "fingerprint": idem.fingerprint,
                "task_id": t.id.to_string(),
                "expires_at": ms(*now + chrono_secs(idem.ttl_seconds)),
            }))
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        // `WHERE true`: without it SQLite would parse `ON CONFLICT` as part of the SELECT's join.
        "INSERT INTO idempotency_keys (key, fingerprint, task_id, expires_at)
         SELECT v ->> 'key', v ->> 'fingerprint', v ->> 'task_id', v ->> 'expires_at'
         FROM (SELECT value AS v FROM json_each(?1)) WHERE true
         ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,
             task_id = excluded.task_id, expires_at = excluded.expires_at",
    )
    .bind(serde_json::Value::Array(rows).to_string())
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}
