//! Submission for PostgreSQL: each keyed item's idempotency record decided inside the caller's
//! transaction, and each run of keyless items inserted by one statement.
//!
//! Invariant: one task per live key, under READ COMMITTED and any number of concurrent submitters.
//! The key's row is claimed with `INSERT … ON CONFLICT DO UPDATE … WHERE expired`: a concurrent
//! claimer of the same key makes it wait until that claimer commits or rolls back, so exactly one
//! transaction owns a live key, and every other one then reads the committed owner's record (and
//! task, inserted in the same transaction) to replay it or refuse the request. No unique violation
//! can escape: the key's only unique index is the conflict target.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use idem_core::task::Idempotency;
use idem_core::time::chrono_secs;
use idem_core::{NewTask, StoreError, Submitted, Task, TaskId, TaskState};
use sqlx::PgConnection;

use super::{rows, tasks};
use crate::db_err;
use crate::fire::FireSubmit;

/// Submits a batch inside the caller's transaction, in order: each keyed item by [`submit_one`],
/// and each run of consecutive keyless items, which need no key decided, by one multi-row INSERT.
/// The statements run in the batch's order, so the outcome (and which error ends the batch) is
/// that of submitting the items one by one.
pub(super) async fn submit_batch(
    tx: &mut PgConnection,
    batch: Vec<NewTask>,
    now: DateTime<Utc>,
) -> Result<Vec<Submitted>, StoreError> {
    let mut out = Vec::with_capacity(batch.len());
    let mut keyless = Vec::new();
    for (index, t) in batch.into_iter().enumerate() {
        if t.idempotency.is_none() {
            keyless.push(t);
            continue;
        }
        insert_run(tx, &mut keyless, now, &mut out).await?;
        out.push(submit_one(tx, t, now, index).await?);
    }
    insert_run(tx, &mut keyless, now, &mut out).await?;
    Ok(out)
}

/// Inserts a run of keyless tasks (emptying it) and appends them to `out` in the run's order.
async fn insert_run(
    tx: &mut PgConnection,
    run: &mut Vec<NewTask>,
    now: DateTime<Utc>,
    out: &mut Vec<Submitted>,
) -> Result<(), StoreError> {
    if run.is_empty() {
        return Ok(());
    }
    let mut tasks = insert_many(tx, run, now).await?;
    for t in run.drain(..) {
        let task = tasks
            .remove(&t.id)
            .ok_or_else(|| rows::corrupt("id", format!("{} was not inserted", t.id)))?;
        out.push(Submitted {
            task,
            replayed: false,
        });
    }
    Ok(())
}

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

/// Submits a pass's fires inside the caller's transaction, each as [`submit_one`] would, in two
/// statements for the usual case: the free keys are claimed by one `INSERT … ON CONFLICT` and their
/// tasks inserted by one more. A fire's key (`job:{id}:{slot}`) is disjoint from every concurrent
/// pass's (each job is locked by one pass), so the claim never waits in practice; it takes the keys
/// in sorted order all the same, so two such statements cannot deadlock. A key that is live already
/// (the slot fired before its history was pruned, or a client's task from before the namespace was
/// reserved) goes through [`submit_one`], which replays it or refuses it.
pub(super) async fn submit_fires(
    tx: &mut PgConnection,
    tasks: Vec<NewTask>,
    now: DateTime<Utc>,
) -> Result<Vec<FireSubmit>, StoreError> {
    let mut keyed: Vec<(&Idempotency, TaskId)> = tasks
        .iter()
        .filter_map(|t| t.idempotency.as_ref().map(|i| (i, t.id)))
        .collect();
    keyed.sort_by(|a, b| a.0.key.as_str().cmp(b.0.key.as_str()));
    // One statement may not touch a key twice; a key repeated in the pass (slots closer together
    // than the key's milliseconds) is claimed by its first task, and the later one replays it below.
    keyed.dedup_by(|later, first| later.0.key == first.0.key);
    let claimed: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO idempotency_keys (key, fingerprint, task_id, expires_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
         ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,
             task_id = excluded.task_id, expires_at = excluded.expires_at
         WHERE idempotency_keys.expires_at <= $5
         RETURNING task_id",
    )
    .bind(
        keyed
            .iter()
            .map(|(i, _)| i.key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        keyed
            .iter()
            .map(|(i, _)| i.fingerprint.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        keyed
            .iter()
            .map(|(_, id)| id.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        keyed
            .iter()
            .map(|(i, _)| now + chrono_secs(i.ttl_seconds))
            .collect::<Vec<_>>(),
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    // The tasks whose key this statement claimed for them.
    let claimed: HashSet<String> = claimed.into_iter().map(|(id,)| id).collect();
    let is_claimed = |t: &NewTask| t.idempotency.is_some() && claimed.contains(&t.id.to_string());
    let n = tasks.len();
    let (fresh, rest): (Vec<_>, Vec<_>) = tasks
        .into_iter()
        .enumerate()
        .partition(|(_, t)| is_claimed(t));
    let mut out: Vec<Option<FireSubmit>> = (0..n).map(|_| None).collect();
    if !fresh.is_empty() {
        let (at, run): (Vec<usize>, Vec<NewTask>) = fresh.into_iter().unzip();
        let mut inserted = insert_many(tx, &run, now).await?;
        for (i, t) in at.into_iter().zip(&run) {
            let task = inserted
                .remove(&t.id)
                .ok_or_else(|| rows::corrupt("id", format!("{} was not inserted", t.id)))?;
            out[i] = Some(FireSubmit::Submitted(Submitted {
                task,
                replayed: false,
            }));
        }
    }
    for (i, t) in rest {
        out[i] = Some(match submit_one(tx, t, now, 0).await {
            Ok(s) => FireSubmit::Submitted(s),
            Err(StoreError::KeyConflict { .. }) => FireSubmit::KeyConflict,
            Err(e) => return Err(e),
        });
    }
    Ok(out.into_iter().flatten().collect())
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
    let row = sqlx::query(
        "INSERT INTO tasks (id, task, args, state, queue, priority, attempts, max_retries,
             timeout_seconds, idempotency_key, job_id, scheduled_at, run_at, expires_at, created_at,
             traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10, $11, $11, $12, $13, $14)
         RETURNING *",
    )
    .bind(t.id.to_string())
    .bind(t.task.as_str())
    .bind(rows::jsonb(&t.args))
    .bind(state(t, now).as_str())
    .bind(t.queue.as_str())
    .bind(t.priority)
    .bind(t.max_retries)
    .bind(t.timeout_seconds)
    .bind(t.idempotency.as_ref().map(|i| i.key.as_str()))
    .bind(t.job_id.as_ref().map(|j| j.as_str()))
    .bind(t.run_at)
    .bind(t.expires_at)
    .bind(now)
    .bind(t.traceparent.as_deref())
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    rows::task(&row)
}

/// Inserts task rows in one statement, each as [`insert`] would (a keyed row's key must already be
/// claimed for it); returns them by id (a repeated id is a unique violation, which fails the
/// statement).
async fn insert_many(
    tx: &mut PgConnection,
    run: &[NewTask],
    now: DateTime<Utc>,
) -> Result<HashMap<TaskId, Task>, StoreError> {
    let rows = sqlx::query(
        "INSERT INTO tasks (id, task, args, state, queue, priority, attempts, max_retries,
             timeout_seconds, idempotency_key, job_id, scheduled_at, run_at, expires_at, created_at,
             traceparent)
         SELECT id, task, args, state, queue, priority, 0, max_retries, timeout_seconds,
             idempotency_key, job_id, run_at, run_at, expires_at, $11, traceparent
         FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::smallint[],
                 $7::int[], $8::float8[], $9::text[], $10::timestamptz[], $12::timestamptz[],
                 $13::text[], $14::text[])
             AS t(id, task, args, state, queue, priority, max_retries, timeout_seconds, job_id,
                 run_at, expires_at, idempotency_key, traceparent)
         RETURNING *",
    )
    .bind(run.iter().map(|t| t.id.to_string()).collect::<Vec<_>>())
    .bind(run.iter().map(|t| t.task.as_str()).collect::<Vec<_>>())
    .bind(run.iter().map(|t| rows::jsonb(&t.args)).collect::<Vec<_>>())
    .bind(
        run.iter()
            .map(|t| state(t, now).as_str())
            .collect::<Vec<_>>(),
    )
    .bind(run.iter().map(|t| t.queue.as_str()).collect::<Vec<_>>())
    .bind(run.iter().map(|t| t.priority).collect::<Vec<_>>())
    .bind(run.iter().map(|t| t.max_retries).collect::<Vec<_>>())
    .bind(run.iter().map(|t| t.timeout_seconds).collect::<Vec<_>>())
    .bind(
        run.iter()
            .map(|t| t.job_id.as_ref().map(|j| j.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(run.iter().map(|t| t.run_at).collect::<Vec<_>>())
    .bind(now)
    .bind(run.iter().map(|t| t.expires_at).collect::<Vec<_>>())
    .bind(
        run.iter()
            .map(|t| t.idempotency.as_ref().map(|i| i.key.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        run.iter()
            .map(|t| t.traceparent.as_deref())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    rows.iter()
        .map(|r| rows::task(r).map(|t| (t.id, t)))
        .collect()
}

/// A new task's state: `scheduled` when it may start only later, else `queued`.
fn state(t: &NewTask, now: DateTime<Utc>) -> TaskState {
    if t.run_at > now {
        TaskState::Scheduled
    } else {
        TaskState::Queued
    }
}
