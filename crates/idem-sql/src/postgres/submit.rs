//! Submission for PostgreSQL: each item's idempotency record decided inside the caller's
//! transaction.
//!
//! Invariant: one task per live key, under READ COMMITTED and any number of concurrent submitters.
//! The key's row is claimed with `INSERT … ON CONFLICT DO UPDATE … WHERE expired`: a concurrent
//! claimer of the same key makes it wait until that claimer commits or rolls back, so exactly one
//! transaction owns a live key, and every other one then reads the committed owner's record (and
//! task, inserted in the same transaction) to replay it or refuse the request. No unique violation
//! can escape: the key's only unique index is the conflict target.

use chrono::{DateTime, Utc};
use idem_core::task::Idempotency;
use idem_core::time::chrono_secs;
use idem_core::{NewTask, StoreError, Submitted, Task, TaskId, TaskState};
use sqlx::PgConnection;

use super::{rows, tasks};
use crate::db_err;

/// Submits one task inside the caller's transaction: a live key with the same fingerprint replays
/// its task, with another fingerprint refuses the batch (`KeyConflict { index }`); a new or expired
/// key makes a new task.
pub(super) async fn submit_one(
    tx: &mut PgConnection,
    t: NewTask,
    now: DateTime<Utc>,
    index: usize,
) -> Result<Submitted, StoreError> {
    if let Some(idem) = &t.idempotency {
        match claim_key(tx, idem, t.id, now).await? {
            Key::Claimed => {}
            Key::Live {
                fingerprint,
                task_id,
            } => {
                if fingerprint != idem.fingerprint {
                    return Err(StoreError::KeyConflict {
                        index,
                        key: idem.key.to_string(),
                    });
                }
                if let Some(task) = tasks::get(&mut *tx, task_id).await? {
                    return Ok(Submitted {
                        task,
                        replayed: true,
                    });
                }
                // The record outlived its task (a foreign delete): the key makes a task again.
                point_key(tx, idem, t.id, now).await?;
            }
        }
    }
    let task = insert(tx, &t, now).await?;
    Ok(Submitted {
        task,
        replayed: false,
    })
}

/// What became of a key.
enum Key {
    /// The key was free (new, or its record expired): it is now this task's, in this transaction.
    Claimed,
    /// The key is live: the committed record's fingerprint and task.
    Live {
        fingerprint: String,
        task_id: TaskId,
    },
}

/// Takes the key for `task_id` if it is free, or reads the live record that holds it.
async fn claim_key(
    tx: &mut PgConnection,
    idem: &Idempotency,
    task_id: TaskId,
    now: DateTime<Utc>,
) -> Result<Key, StoreError> {
    // Waits for a concurrent transaction that holds the same key, then takes the key only if the
    // committed record has expired; no row back means the key is live. Either way the record's row
    // is now locked by this transaction (ON CONFLICT DO UPDATE locks the row even when its WHERE
    // refuses the update), so `prune` cannot delete it before the read below.
    let claimed: Option<(String,)> = sqlx::query_as(
        "INSERT INTO idempotency_keys (key, fingerprint, task_id, expires_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,
             task_id = excluded.task_id, expires_at = excluded.expires_at
         WHERE idempotency_keys.expires_at <= $5
         RETURNING task_id",
    )
    .bind(idem.key.as_str())
    .bind(&idem.fingerprint)
    .bind(task_id.to_string())
    .bind(now + chrono_secs(idem.ttl_seconds))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    if claimed.is_some() {
        return Ok(Key::Claimed);
    }
    // A new statement sees every commit so far, including the owner's that the INSERT waited for.
    let (fingerprint, id): (String, String) =
        sqlx::query_as("SELECT fingerprint, task_id FROM idempotency_keys WHERE key = $1")
            .bind(idem.key.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
    Ok(Key::Live {
        fingerprint,
        task_id: id.parse().map_err(|e| rows::corrupt("task_id", e))?,
    })
}

/// Points a live key at a new task (its old task is gone).
async fn point_key(
    tx: &mut PgConnection,
    idem: &Idempotency,
    task_id: TaskId,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idempotency_keys SET fingerprint = $2, task_id = $3, expires_at = $4
         WHERE key = $1",
    )
    .bind(idem.key.as_str())
    .bind(&idem.fingerprint)
    .bind(task_id.to_string())
    .bind(now + chrono_secs(idem.ttl_seconds))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Inserts the task row: `scheduled` when it may start only later, else `queued`.
async fn insert(
    tx: &mut PgConnection,
    t: &NewTask,
    now: DateTime<Utc>,
) -> Result<Task, StoreError> {
    let state = if t.run_at > now {
        TaskState::Scheduled
    } else {
        TaskState::Queued
    };
    let row = sqlx::query(
        "INSERT INTO tasks (id, task, args, state, queue, priority, attempts, max_retries,
             timeout_seconds, idempotency_key, job_id, scheduled_at, run_at, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10, $11, $11, $12, $13)
         RETURNING *",
    )
    .bind(t.id.to_string())
    .bind(t.task.as_str())
    .bind(rows::jsonb(&t.args))
    .bind(state.as_str())
    .bind(t.queue.as_str())
    .bind(t.priority)
    .bind(t.max_retries)
    .bind(t.timeout_seconds)
    .bind(t.idempotency.as_ref().map(|i| i.key.as_str()))
    .bind(t.job_id.as_ref().map(|j| j.as_str()))
    .bind(t.run_at)
    .bind(t.expires_at)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    rows::task(&row)
}
