//! Task SQL for SQLite: submission with idempotency records, claims under leases, fenced finishes,
//! cancellation and the lease reaper.

use chrono::{DateTime, Utc};
use idem_core::broker::Hint;
use idem_core::store::{ClaimRequest, Lease, Page, PageRequest, Reaped, TaskFilter};
use idem_core::task::Idempotency;
use idem_core::time::chrono_secs;
use idem_core::{
    Claim, Finish, NewTask, QueueName, StoreError, Submitted, Task, TaskId, TaskState, WorkerId,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::writer::{Script, WriterConn};
use super::{ms, queue_list, rows};
use crate::db_err;
use crate::outcome::{refused, Outcome};

/// The lease of the best `?5` queued tasks of queue `?4` (`?1` now, `?2` worker, `?3` lease end):
/// candidates and lease in one statement. A macro, so that scripts can `concat!` it.
macro_rules! claim_from_sql {
    () => {
        "UPDATE tasks SET state = 'running', attempts = attempts + 1, started_at = ?1,
             lease_owner = ?2, lease_expires_at = ?3
         WHERE id IN (
             SELECT id FROM tasks
             WHERE state = 'queued' AND queue = ?4 AND (expires_at IS NULL OR expires_at > ?1)
             ORDER BY priority DESC, run_at, id
             LIMIT ?5)
         RETURNING *"
    };
}

/// Makes the scheduled and retrying tasks due at `?1` `queued` (a macro, as [`claim_from_sql`]).
macro_rules! promote_sql {
    () => {
        "UPDATE tasks SET state = 'queued' WHERE state IN ('scheduled', 'retrying') AND run_at <= ?1"
    };
}

/// Inserts one task (`?1`..`?14` as bound by `bind_insert`), returning it.
macro_rules! insert_sql {
    () => {
        "INSERT INTO tasks (id, task, args, state, queue, priority, attempts, max_retries,
             timeout_seconds, idempotency_key, job_id, scheduled_at, run_at, expires_at, created_at,
             traceparent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13, ?14)
         RETURNING *"
    };
}

/// Records an attempt's outcome, fenced on its attempt number (`?1`..`?8` as bound by
/// `bind_finish`), returning the task.
macro_rules! finish_sql {
    () => {
        "UPDATE tasks SET state = ?1, result = ?2, error_kind = ?3, error_message = ?4,
             run_at = COALESCE(?5, run_at), finished_at = ?6, lease_owner = NULL,
             lease_expires_at = NULL, dispatched_at = NULL
         WHERE id = ?7 AND attempts = ?8 AND state = 'running'
         RETURNING *"
    };
}

/// A task row as one JSON object, every column under its name (`rows::TaskColumns`). Statements that
/// answer with many tasks aggregate these into one row (`json_group_array`): sqlx sends each row
/// from the connection's thread as a message of its own, a wake-up each, where one row is one.
/// The REAL column goes as 17-digit text: JSON's own rendering keeps 15 digits, which loses bits
/// that the row form keeps.
macro_rules! task_json {
    () => {
        "json_object('id', id, 'task', task, 'args', args, 'state', state, 'queue', queue,
             'priority', priority, 'attempts', attempts, 'max_retries', max_retries,
             'timeout_seconds', printf('%!.17g', timeout_seconds), 'idempotency_key', idempotency_key,
             'job_id', job_id, 'scheduled_at', scheduled_at, 'run_at', run_at,
             'expires_at', expires_at, 'created_at', created_at, 'started_at', started_at,
             'finished_at', finished_at, 'result', result, 'error_kind', error_kind,
             'error_message', error_message, 'traceparent', traceparent)"
    };
}

/// Submits one task inside the caller's transaction: a live key with the same fingerprint replays
/// its task, with another fingerprint refuses the batch; a new or expired key makes a new task.
pub(super) async fn submit_one(
    tx: &mut SqliteConnection,
    t: NewTask,
    now: DateTime<Utc>,
    index: usize,
) -> Result<Submitted, StoreError> {
    if let Some(idem) = &t.idempotency {
        if let Some(existing) = live_key(tx, idem, now).await? {
            let (fingerprint, task_id) = existing;
            if fingerprint != idem.fingerprint {
                return Err(StoreError::KeyConflict {
                    index,
                    key: idem.key.to_string(),
                });
            }
            if let Some(task) = get(&mut *tx, task_id).await? {
                return Ok(Submitted {
                    task,
                    replayed: true,
                });
            }
        }
    }
    let task = insert(tx, &t, now).await?;
    Ok(Submitted {
        task,
        replayed: false,
    })
}

/// The live record of a key: its fingerprint and task.
pub(super) async fn live_key(
    tx: &mut SqliteConnection,
    idem: &Idempotency,
    now: DateTime<Utc>,
) -> Result<Option<(String, TaskId)>, StoreError> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT fingerprint, task_id FROM idempotency_keys WHERE key = ? AND expires_at > ?",
    )
    .bind(idem.key.as_str())
    .bind(ms(now))
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    row.map(|(fp, id)| Ok((fp, id.parse().map_err(|e| rows::corrupt("task_id", e))?)))
        .transpose()
}

/// Inserts a task and, when it has one, its idempotency record (replacing an expired record).
pub(super) async fn insert(
    tx: &mut SqliteConnection,
    t: &NewTask,
    now: DateTime<Utc>,
) -> Result<Task, StoreError> {
    let row = bind_insert(sqlx::query(insert_sql!()), t, now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    if let Some(idem) = &t.idempotency {
        sqlx::query(
            "INSERT INTO idempotency_keys (key, fingerprint, task_id, expires_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,
                 task_id = excluded.task_id, expires_at = excluded.expires_at",
        )
        .bind(idem.key.as_str())
        .bind(&idem.fingerprint)
        .bind(t.id.to_string())
        .bind(ms(now + chrono_secs(idem.ttl_seconds)))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    rows::task(&row)
}

fn bind_insert<'q>(q: Script<'q>, t: &'q NewTask, now: DateTime<Utc>) -> Script<'q> {
    let state = if t.run_at > now {
        TaskState::Scheduled
    } else {
        TaskState::Queued
    };
    q.bind(t.id.to_string())
        .bind(t.task.as_str())
        .bind(t.args.to_string())
        .bind(state.as_str())
        .bind(t.queue.as_str())
        .bind(i64::from(t.priority))
        .bind(i64::from(t.max_retries))
        .bind(t.timeout_seconds)
        .bind(t.idempotency.as_ref().map(|i| i.key.as_str()))
        .bind(t.job_id.as_ref().map(|j| j.as_str()))
        .bind(ms(t.run_at))
        .bind(t.expires_at.map(ms))
        .bind(ms(now))
        .bind(t.traceparent.as_deref())
}

/// A keyless task as one script: the insert and the commit in one round trip to the writer's
/// thread (the whole transaction of a lone keyless `submit`).
pub(super) async fn submit_keyless_script(
    w: &mut WriterConn,
    t: &NewTask,
    now: DateTime<Utc>,
) -> Result<Submitted, StoreError> {
    debug_assert!(t.idempotency.is_none());
    const SCRIPT: &str = concat!("BEGIN IMMEDIATE;\n", insert_sql!(), ";\nCOMMIT");
    let rows = w.transact(bind_insert(sqlx::query(SCRIPT), t, now)).await?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt(format!("task {} was not inserted", t.id)))?;
    Ok(Submitted {
        task: rows::task(row)?,
        replayed: false,
    })
}

pub(super) async fn get<'e, E>(ex: E, id: TaskId) -> Result<Option<Task>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let row = sqlx::query("SELECT * FROM tasks WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(ex)
        .await
        .map_err(db_err)?;
    row.as_ref().map(rows::task).transpose()
}

/// Newest first; the cursor is the last id of the previous page. A state filter reads the
/// `(state, id)` index, a job filter the `(job_id, state)` one; otherwise the primary key.
pub(super) async fn list(
    pool: &SqlitePool,
    f: &TaskFilter,
    page: &PageRequest,
) -> Result<Page<Task>, StoreError> {
    let query = match (&f.state, &f.job_id) {
        (Some(_), _) => sqlx::query(
            "SELECT * FROM tasks INDEXED BY tasks_state
             WHERE state = ?1 AND (?2 IS NULL OR task = ?2)
               AND (?3 IS NULL OR job_id = ?3) AND (?4 IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?5",
        ),
        (None, Some(_)) => sqlx::query(
            "SELECT * FROM tasks
             WHERE ?1 IS NULL AND (?2 IS NULL OR task = ?2)
               AND job_id = ?3 AND (?4 IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?5",
        ),
        (None, None) => sqlx::query(
            "SELECT * FROM tasks
             WHERE ?1 IS NULL AND (?2 IS NULL OR task = ?2)
               AND ?3 IS NULL AND (?4 IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?5",
        ),
    };
    let rows = query
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.task.as_ref().map(|t| t.as_str()))
        .bind(f.job_id.as_ref().map(|j| j.as_str()))
        .bind(page.after.as_deref())
        .bind(i64::from(page.limit) + 1)
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    let items = rows.iter().map(rows::task).collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_overfetch(items, page.limit, |t| {
        t.id.to_string()
    }))
}

/// Cancels an unfinished task; returns it and, when it was running, the attempt that was fenced.
pub(super) async fn cancel(
    tx: &mut SqliteConnection,
    id: TaskId,
    now: DateTime<Utc>,
) -> Result<Option<(Task, Option<i32>)>, StoreError> {
    let Some(before) = get(&mut *tx, id).await? else {
        return Ok(None);
    };
    if before.state.is_final() {
        return Ok(Some((before, None)));
    }
    let row = sqlx::query(
        "UPDATE tasks SET state = 'cancelled', finished_at = ?, lease_owner = NULL,
             lease_expires_at = NULL
         WHERE id = ? RETURNING *",
    )
    .bind(ms(now))
    .bind(id.to_string())
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    let was_running = (before.state == TaskState::Running).then_some(before.attempts);
    Ok(Some((rows::task(&row)?, was_running)))
}

/// Makes due scheduled and retrying tasks `queued`.
pub(super) async fn promote(
    tx: &mut SqliteConnection,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(promote_sql!())
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub(super) async fn claim(
    tx: &mut SqliteConnection,
    req: &ClaimRequest,
) -> Result<Vec<Claim>, StoreError> {
    promote(tx, req.now).await?;
    if let [queue] = req.queues.as_slice() {
        return claim_from(tx, req, queue).await;
    }
    // The best `limit` candidates of each queue come off the ordered index `tasks_queued`
    // (an `IN` over several queues would scan and sort every queued task); the best `limit` of
    // those are claimed.
    let mut candidates: Vec<(i64, i64, String)> = Vec::new();
    for queue in &req.queues {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT id, priority, run_at FROM tasks
             WHERE state = 'queued' AND queue = ?1 AND (expires_at IS NULL OR expires_at > ?2)
             ORDER BY priority DESC, run_at, id
             LIMIT ?3",
        )
        .bind(queue.as_str())
        .bind(ms(req.now))
        .bind(i64::from(req.limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        candidates.extend(rows.into_iter().map(|(id, p, at)| (-p, at, id)));
    }
    candidates.sort();
    candidates.truncate(req.limit as usize);
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // One statement leases them all.
    let ids: Vec<String> = candidates.into_iter().map(|(_, _, id)| id).collect();
    let rows = sqlx::query(
        "UPDATE tasks SET state = 'running', attempts = attempts + 1, started_at = ?1,
             lease_owner = ?2, lease_expires_at = ?3
         WHERE id IN (SELECT value FROM json_each(?4)) AND state = 'queued'
         RETURNING *",
    )
    .bind(ms(req.now))
    .bind(&req.worker.0)
    .bind(ms(req.lease_until))
    .bind(serde_json::to_string(&ids).expect("strings serialize"))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let mut claims = rows
        .iter()
        .map(|row| {
            Ok(Claim {
                task: rows::task(row)?,
                lease_until: req.lease_until,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // RETURNING has no order; hand them out in the candidates' order.
    let rank: std::collections::HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    claims.sort_by_cached_key(|c| rank.get(c.task.id.to_string().as_str()).copied());
    Ok(claims)
}

fn bind_claim_from<'q>(q: Script<'q>, req: &'q ClaimRequest, queue: &'q QueueName) -> Script<'q> {
    q.bind(ms(req.now))
        .bind(&req.worker.0)
        .bind(ms(req.lease_until))
        .bind(queue.as_str())
        .bind(i64::from(req.limit))
}

/// The claim from one queue: candidates and lease in one statement.
async fn claim_from(
    tx: &mut SqliteConnection,
    req: &ClaimRequest,
    queue: &QueueName,
) -> Result<Vec<Claim>, StoreError> {
    let rows = bind_claim_from(sqlx::query(claim_from_sql!()), req, queue)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
    in_claim_order(&rows, req)
}

/// The claim from one queue as one script: the promotion of due tasks, the claim and the commit
/// in one round trip to the writer's thread (the whole transaction of [`claim`] for one queue).
/// The candidates are noted in `temp.picked`, leased, and read back as one JSON row.
pub(super) async fn claim_from_script(
    w: &mut WriterConn,
    req: &ClaimRequest,
    queue: &QueueName,
) -> Result<Vec<Claim>, StoreError> {
    const SCRIPT: &str = concat!(
        "BEGIN IMMEDIATE;\n",
        promote_sql!(),
        ";
         INSERT INTO temp.picked (rid)
             SELECT rowid FROM tasks
             WHERE state = 'queued' AND queue = ?4 AND (expires_at IS NULL OR expires_at > ?1)
             ORDER BY priority DESC, run_at, id
             LIMIT ?5;
         UPDATE tasks SET state = 'running', attempts = attempts + 1, started_at = ?1,
             lease_owner = ?2, lease_expires_at = ?3
         WHERE rowid IN (SELECT rid FROM temp.picked);
         SELECT json_group_array(",
        task_json!(),
        ") FROM tasks WHERE rowid IN (SELECT rid FROM temp.picked);
         DELETE FROM temp.picked;
         COMMIT"
    );
    let rows = w
        .transact(bind_claim_from(sqlx::query(SCRIPT), req, queue))
        .await?;
    let mut keyed = rows::tasks_json(&one_text(&rows)?)?
        .into_iter()
        .map(|(task, run_at)| ((-i64::from(task.priority), run_at, task.id), task))
        .collect::<Vec<_>>();
    keyed.sort_by_key(|(k, _)| *k);
    Ok(keyed
        .into_iter()
        .map(|(_, task)| Claim {
            task,
            lease_until: req.lease_until,
        })
        .collect())
}

/// The text of the first column of the first row (a script's JSON answer).
fn one_text(rows: &[SqliteRow]) -> Result<String, StoreError> {
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("a script returned no row".into()))?;
    row.try_get(0).map_err(|e| rows::corrupt("JSON answer", e))
}

/// Claims from the rows their claim returned, in the index's order (RETURNING has none).
fn in_claim_order(rows: &[SqliteRow], req: &ClaimRequest) -> Result<Vec<Claim>, StoreError> {
    let mut keyed = rows
        .iter()
        .map(|row| {
            let priority: i64 = row
                .try_get("priority")
                .map_err(|e| rows::corrupt("priority", e))?;
            let run_at: i64 = row
                .try_get("run_at")
                .map_err(|e| rows::corrupt("run_at", e))?;
            let task = rows::task(row)?;
            Ok(((-priority, run_at, task.id), task))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    keyed.sort_by_key(|(k, _)| *k);
    Ok(keyed
        .into_iter()
        .map(|(_, task)| Claim {
            task,
            lease_until: req.lease_until,
        })
        .collect())
}

pub(super) async fn claim_one(
    tx: &mut SqliteConnection,
    id: TaskId,
    worker: &WorkerId,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<Claim>, StoreError> {
    promote(tx, now).await?;
    let row = sqlx::query(
        "UPDATE tasks SET state = 'running', attempts = attempts + 1, started_at = ?1,
             lease_owner = ?2, lease_expires_at = ?3
         WHERE id = ?4 AND state = 'queued' AND (expires_at IS NULL OR expires_at > ?1)
         RETURNING *",
    )
    .bind(ms(now))
    .bind(&worker.0)
    .bind(ms(lease_until))
    .bind(id.to_string())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    row.map(|r| {
        Ok(Claim {
            task: rows::task(&r)?,
            lease_until,
        })
    })
    .transpose()
}

pub(super) async fn renew(
    tx: &mut SqliteConnection,
    worker: &WorkerId,
    leases: &[Lease],
    lease_until: DateTime<Utc>,
) -> Result<Vec<Lease>, StoreError> {
    let mut lost = Vec::new();
    for l in leases {
        let r = sqlx::query(
            "UPDATE tasks SET lease_expires_at = ?
             WHERE id = ? AND attempts = ? AND state = 'running' AND lease_owner = ?",
        )
        .bind(ms(lease_until))
        .bind(l.task_id.to_string())
        .bind(i64::from(l.attempt))
        .bind(&worker.0)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if r.rows_affected() == 0 {
            lost.push(*l);
        }
    }
    Ok(lost)
}

/// Records an attempt's outcome, fenced: only the running attempt with this number may finish.
pub(super) async fn finish(
    tx: &mut SqliteConnection,
    lease: Lease,
    finish: Finish,
    now: DateTime<Utc>,
) -> Result<Task, StoreError> {
    let o = Outcome::of(&finish, now);
    let row = bind_finish(sqlx::query(finish_sql!()), lease, &o)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
    match row {
        Some(r) => rows::task(&r),
        None => Err(refused(
            lease,
            get(&mut *tx, lease.task_id).await?.is_some(),
        )),
    }
}

fn bind_finish<'q>(q: Script<'q>, lease: Lease, o: &Outcome<'q>) -> Script<'q> {
    q.bind(o.state.as_str())
        .bind(o.result.map(|v| v.to_string()))
        .bind(o.error.map(|e| e.kind.as_str()))
        .bind(o.error.map(|e| e.message.as_str()))
        .bind(o.run_at.map(ms))
        .bind(o.finished_at.map(ms))
        .bind(lease.task_id.to_string())
        .bind(i64::from(lease.attempt))
}

/// [`finish`] as one script: the fenced update and the commit in one round trip to the writer's
/// thread (the whole transaction of a lone `finish`). A refusal is explained after the commit,
/// from the committed row (nothing was written for it either way).
pub(super) async fn finish_script(
    w: &mut WriterConn,
    lease: Lease,
    finish: Finish,
    now: DateTime<Utc>,
) -> Result<Task, StoreError> {
    const SCRIPT: &str = concat!("BEGIN IMMEDIATE;\n", finish_sql!(), ";\nCOMMIT");
    let o = Outcome::of(&finish, now);
    let rows = w
        .transact(bind_finish(sqlx::query(SCRIPT), lease, &o))
        .await?;
    match rows.first() {
        Some(r) => rows::task(r),
        None => Err(refused(
            lease,
            get(&mut **w, lease.task_id).await?.is_some(),
        )),
    }
}

/// Hands a running attempt back to the queue (graceful shutdown). The attempt number stays
/// consumed, so the fencing token is never reused.
pub(super) async fn release(
    tx: &mut SqliteConnection,
    lease: Lease,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE tasks SET state = 'queued', run_at = ?, lease_owner = NULL, lease_expires_at = NULL,
             dispatched_at = NULL
         WHERE id = ? AND attempts = ? AND state = 'running'",
    )
    .bind(ms(now))
    .bind(lease.task_id.to_string())
    .bind(i64::from(lease.attempt))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(super) async fn next_ready_at(
    pool: &SqlitePool,
    queues: &[QueueName],
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let (at,): (Option<i64>,) = sqlx::query_as(
        "SELECT min(run_at) FROM tasks
         WHERE state IN ('scheduled', 'retrying') AND queue IN (SELECT value FROM json_each(?))",
    )
    .bind(queue_list(queues))
    .fetch_one(pool)
    .await
    .map_err(db_err)?;
    Ok(at.map(idem_core::time::from_ms))
}

/// Returns each task whose lease expired to the queue, or fails it when no retry is left. One UPDATE,
/// so each expired attempt is reaped once however many reapers run.
pub(super) async fn reap(
    tx: &mut SqliteConnection,
    now: DateTime<Utc>,
) -> Result<Vec<Reaped>, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "UPDATE tasks SET
             state = CASE WHEN attempts > max_retries THEN 'failed' ELSE 'queued' END,
             finished_at = CASE WHEN attempts > max_retries THEN ?1 ELSE NULL END,
             error_kind = 'lease_expired',
             error_message = 'the worker running this attempt stopped renewing its lease',
             run_at = ?1, lease_owner = NULL, lease_expires_at = NULL, dispatched_at = NULL
         WHERE state = 'running' AND lease_expires_at < ?1
         RETURNING id, state",
    )
    .bind(ms(now))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    rows.into_iter()
        .map(|(id, state)| {
            Ok(Reaped {
                task_id: id.parse().map_err(|e| rows::corrupt("id", e))?,
                state: state.parse().map_err(|e| rows::corrupt("state", e))?,
            })
        })
        .collect()
}

/// The outbox step: marks up to `limit` queued tasks that need a message at `mark`.
pub(super) async fn take_for_dispatch(
    tx: &mut SqliteConnection,
    now: DateTime<Utc>,
    limit: u32,
    redeliver_before: DateTime<Utc>,
    mark: DateTime<Utc>,
) -> Result<Vec<Hint>, StoreError> {
    promote(tx, now).await?;
    let rows: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
        "UPDATE tasks SET dispatched_at = ?1
         WHERE id IN (
             SELECT id FROM tasks
             WHERE state = 'queued' AND (dispatched_at IS NULL OR dispatched_at < ?2)
             ORDER BY priority DESC, run_at, id
             LIMIT ?3)
         RETURNING id, queue, priority, traceparent",
    )
    .bind(ms(mark))
    .bind(ms(redeliver_before))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    rows.into_iter()
        .map(|(id, queue, priority, traceparent)| {
            Ok(Hint {
                task_id: id.parse().map_err(|e| rows::corrupt("id", e))?,
                queue: queue.try_into().map_err(|e| rows::corrupt("queue", e))?,
                priority: priority as i16,
                traceparent,
            })
        })
        .collect()
}

/// Records the confirmed publish time of queued tasks.
/// Records the publish time of queued tasks that still carry the mark `taken` (compare-and-set:
/// a task taken again since keeps its newer mark).
pub(super) async fn mark_dispatched(
    tx: &mut SqliteConnection,
    ids: &[TaskId],
    taken: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    sqlx::query(
        "UPDATE tasks SET dispatched_at = ?2
         WHERE state = 'queued' AND id IN (SELECT value FROM json_each(?1)) AND dispatched_at = ?3",
    )
    .bind(serde_json::to_string(&ids).expect("strings serialize"))
    .bind(ms(at))
    .bind(ms(taken))
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(super) async fn next_ready_at_any(
    pool: &SqlitePool,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let (at,): (Option<i64>,) =
        sqlx::query_as("SELECT min(run_at) FROM tasks WHERE state IN ('scheduled', 'retrying')")
            .fetch_one(pool)
            .await
            .map_err(db_err)?;
    Ok(at.map(idem_core::time::from_ms))
}

/// The outcome group as JSON objects, one per item (what [`FINISH_MANY`] unpacks).
fn outcome_rows(items: &[(Lease, Finish)], now: DateTime<Utc>) -> String {
    let rows: Vec<serde_json::Value> = items
        .iter()
        .map(|(lease, f)| {
            let o = Outcome::of(f, now);
            serde_json::json!({
                "id": lease.task_id.to_string(),
                "attempt": lease.attempt,
                "state": o.state.as_str(),
                "result": o.result.map(|v| v.to_string()),
                "error_kind": o.error.map(|e| e.kind.as_str()),
                "error_message": o.error.map(|e| e.message.as_str()),
                "run_at": o.run_at.map(ms),
                "finished_at": o.finished_at.map(ms),
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// The fenced update of an outcome group (`?1`, [`outcome_rows`]) as one script, commit included.
/// The tasks whose running attempt is the item's are noted in `temp.picked` first, then updated
/// under the same fence (nothing writes between the two: one transaction on the one writer), then
/// read back as one JSON row; a second row lists which of the group's tasks exist, so a refusal
/// says "fenced" or "not found" as a lone finish would.
///
/// The items are unpacked once, in a subquery (MATERIALIZED: otherwise the planner may scan the
/// running tasks and re-read the whole JSON array for each, which measured quadratic in the group
/// size); each then finds its task by primary key.
const FINISH_MANY: &str = concat!(
    "BEGIN IMMEDIATE;
     WITH f AS MATERIALIZED (
         SELECT value ->> 'id' AS id, value ->> 'attempt' AS attempt FROM json_each(?1))
     INSERT INTO temp.picked (rid)
         SELECT tasks.rowid FROM f CROSS JOIN tasks
         WHERE tasks.id = f.id AND tasks.attempts = f.attempt AND tasks.state = 'running';
     WITH f AS MATERIALIZED (
         SELECT value ->> 'id' AS id, value ->> 'attempt' AS attempt, value ->> 'state' AS state,
             value ->> 'result' AS result, value ->> 'error_kind' AS error_kind,
             value ->> 'error_message' AS error_message, value ->> 'run_at' AS run_at,
             value ->> 'finished_at' AS finished_at
         FROM json_each(?1))
     UPDATE tasks SET state = f.state, result = f.result, error_kind = f.error_kind,
         error_message = f.error_message, run_at = COALESCE(f.run_at, tasks.run_at),
         finished_at = f.finished_at, lease_owner = NULL, lease_expires_at = NULL,
         dispatched_at = NULL
     FROM f
     WHERE tasks.id = f.id AND tasks.attempts = f.attempt AND tasks.state = 'running';
     SELECT json_group_array(",
    task_json!(),
    ") FROM tasks WHERE rowid IN (SELECT rid FROM temp.picked);
     SELECT json_group_array(id) FROM tasks
     WHERE id IN (SELECT value ->> 'id' FROM json_each(?1))
       AND rowid NOT IN (SELECT rid FROM temp.picked);
     DELETE FROM temp.picked;
     COMMIT"
);

/// Records many attempts' outcomes as one script ([`FINISH_MANY`]): a few statements and one
/// commit for the whole group instead of one statement per outcome. Each item is fenced on its own,
/// exactly as [`finish`] would fence it alone. A group that names a task twice goes through
/// [`finish_many`] instead, in order.
pub(super) async fn finish_many_script(
    w: &mut WriterConn,
    items: &[(Lease, Finish)],
    now: DateTime<Utc>,
) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
    let rows = w
        .transact(sqlx::query(FINISH_MANY).bind(outcome_rows(items, now)))
        .await?;
    let text = |i: usize| -> Result<String, StoreError> {
        rows.get(i)
            .ok_or_else(|| StoreError::Corrupt("the outcome script returned too few rows".into()))?
            .try_get(0)
            .map_err(|e| rows::corrupt("JSON answer", e))
    };
    let mut by_id: std::collections::HashMap<TaskId, Task> = rows::tasks_json(&text(0)?)?
        .into_iter()
        .map(|(task, _)| (task.id, task))
        .collect();
    let refused_existing: Vec<String> =
        serde_json::from_str(&text(1)?).map_err(|e| rows::corrupt("refused ids", e))?;
    let refused_existing: std::collections::HashSet<String> =
        refused_existing.into_iter().collect();
    Ok(items
        .iter()
        .map(|(lease, _)| match by_id.remove(&lease.task_id) {
            Some(task) => Ok(task),
            None => Err(refused(
                *lease,
                refused_existing.contains(&lease.task_id.to_string()),
            )),
        })
        .collect())
}

/// Whether every item of the group names a different task (then [`finish_many_script`] applies).
pub(super) fn distinct_tasks(items: &[(Lease, Finish)]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.iter().all(|(l, _)| seen.insert(l.task_id))
}

/// Records outcomes one after the other inside the caller's transaction (a group that names a task
/// twice: the first of them wins, as it would one after the other).
pub(super) async fn finish_many(
    tx: &mut SqliteConnection,
    items: Vec<(Lease, Finish)>,
    now: DateTime<Utc>,
) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
    let mut out = Vec::with_capacity(items.len());
    for (lease, f) in items {
        out.push(match finish(tx, lease, f, now).await {
            Err(StoreError::Unavailable(e)) => return Err(StoreError::Unavailable(e)),
            r => r,
        });
    }
    Ok(out)
}

/// Inserts tasks without idempotency keys with one `INSERT … SELECT FROM json_each`: one statement
/// for a whole batch instead of one per task. Returns them in the order given.
pub(super) async fn insert_many(
    tx: &mut SqliteConnection,
    batch: &[NewTask],
    now: DateTime<Utc>,
) -> Result<Vec<Task>, StoreError> {
    debug_assert!(batch.iter().all(|t| t.idempotency.is_none()));
    let rows: Vec<serde_json::Value> = batch
        .iter()
        .map(|t| {
            let state = if t.run_at > now {
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
                "job_id": t.job_id.as_ref().map(|j| j.as_str()),
                "run_at": ms(t.run_at),
                "expires_at": t.expires_at.map(ms),
                "traceparent": t.traceparent.as_deref(),
            })
        })
        .collect();
    // The inserted tasks come back as one JSON row (a row each would be a message each).
    const INSERT_MANY: &str = concat!(
        "INSERT INTO tasks (id, task, args, state, queue, priority, attempts, max_retries,
             timeout_seconds, idempotency_key, job_id, scheduled_at, run_at, expires_at, created_at,
             traceparent)
         SELECT v ->> 'id', v ->> 'task', v ->> 'args', v ->> 'state', v ->> 'queue',
             v ->> 'priority', 0, v ->> 'max_retries', v ->> 'timeout_seconds', NULL,
             v ->> 'job_id', v ->> 'run_at', v ->> 'run_at', v ->> 'expires_at', ?2,
             v ->> 'traceparent'
         FROM (SELECT value AS v FROM json_each(?1));
         SELECT json_group_array(",
        task_json!(),
        ") FROM tasks WHERE id IN (SELECT value ->> 'id' FROM json_each(?1))"
    );
    let inserted = sqlx::query(INSERT_MANY)
        .bind(serde_json::Value::Array(rows).to_string())
        .bind(ms(now))
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
    let mut by_id: std::collections::HashMap<TaskId, Task> =
        rows::tasks_json(&one_text(&inserted)?)?
            .into_iter()
            .map(|(task, _)| (task.id, task))
            .collect();
    batch
        .iter()
        .map(|t| {
            by_id
                .remove(&t.id)
                .ok_or_else(|| StoreError::Corrupt(format!("task {} was not inserted", t.id)))
        })
        .collect()
}
