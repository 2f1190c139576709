//! Task SQL for PostgreSQL: reads, claims under leases (`FOR UPDATE SKIP LOCKED`, so concurrent
//! claimers never wait for each other), fenced finishes, cancellation, expiry and the lease reaper.
//!
//! Invariant: every change to a leased attempt is fenced by `id`, `attempts` and `state =
//! 'running'` in the UPDATE's own WHERE, so a superseded attempt's call changes nothing, and each
//! expired lease is reaped by exactly one UPDATE.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use idem_core::store::{ClaimRequest, Lease, Page, PageRequest, Reaped, TaskFilter};
use idem_core::{Claim, Finish, QueueName, StoreError, Task, TaskId, TaskState, WorkerId};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use super::{queue_list, rows};
use crate::db_err;
use crate::outcome::{refused, Outcome};

pub(super) async fn get<'e, E>(ex: E, id: TaskId) -> Result<Option<Task>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    let row = sqlx::query("SELECT * FROM tasks WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(ex)
        .await
        .map_err(db_err)?;
    row.as_ref().map(rows::task).transpose()
}

/// Newest first; the cursor is the last id of the previous page.
pub(super) async fn list(
    pool: &PgPool,
    f: &TaskFilter,
    page: &PageRequest,
) -> Result<Page<Task>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM tasks
         WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR task = $2)
           AND ($3::text IS NULL OR job_id = $3) AND ($4::text IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5",
    )
    .bind(f.state.map(|s| s.as_str()))
    .bind(f.task.as_ref().map(|t| t.as_str()))
    .bind(f.job_id.as_ref().map(|j| j.as_str()))
    .bind(page.after.as_deref().map(rows::text))
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
/// The row is locked first, so a finish racing the cancel either lands before it or is fenced by
/// it.
pub(super) async fn cancel(
    tx: &mut PgConnection,
    id: TaskId,
    now: DateTime<Utc>,
) -> Result<Option<(Task, Option<i32>)>, StoreError> {
    let before = sqlx::query("SELECT * FROM tasks WHERE id = $1 FOR UPDATE")
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
    let Some(before) = before.as_ref().map(rows::task).transpose()? else {
        return Ok(None);
    };
    if before.state.is_final() {
        return Ok(Some((before, None)));
    }
    let row = sqlx::query(
        "UPDATE tasks SET state = 'cancelled', finished_at = $1, lease_owner = NULL,
             lease_expires_at = NULL
         WHERE id = $2 RETURNING *",
    )
    .bind(now)
    .bind(id.to_string())
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    let was_running = (before.state == TaskState::Running).then_some(before.attempts);
    Ok(Some((rows::task(&row)?, was_running)))
}

/// Makes the due scheduled and retrying tasks of these queues (`None`: of all queues) `queued`.
/// Rows another transaction holds are skipped, not waited for: that transaction is claiming,
/// finishing or promoting them itself.
pub(super) async fn promote(
    tx: &mut PgConnection,
    queues: Option<&[QueueName]>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // The due ids are collected into an array first (`= ANY(ARRAY(..))`, not `IN (..)`), so the
    // UPDATE looks each one up by primary key. With `IN`, the planner estimates the due tasks from
    // statistics that cannot tell how few are due (most tasks have a past `run_at`, many are
    // waiting) and hash-joins instead: a sequential scan of the whole table, finished tasks
    // included, on every claim that finds one task due — 15 ms at 60,000 rows, and growing.
    sqlx::query(
        "UPDATE tasks SET state = 'queued'
         WHERE id = ANY(ARRAY(
             SELECT id FROM tasks
             WHERE state IN ('scheduled', 'retrying') AND ($1::text[] IS NULL OR queue = ANY($1))
               AND run_at <= $2
             FOR UPDATE SKIP LOCKED))",
    )
    .bind(queues.map(queue_list))
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

fn claims(rows: &[PgRow], lease_until: DateTime<Utc>) -> Result<Vec<Claim>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok(Claim {
                task: rows::task(r)?,
                lease_until,
            })
        })
        .collect()
}

pub(super) async fn claim(
    tx: &mut PgConnection,
    req: &ClaimRequest,
) -> Result<Vec<Claim>, StoreError> {
    promote(tx, Some(&req.queues), req.now).await?;
    let rows = sqlx::query(
        "UPDATE tasks SET state = 'running', attempts = attempts + 1, started_at = $1,
             lease_owner = $2, lease_expires_at = $3
         WHERE id IN (
             -- Per queue, so each reads the ordered index `tasks_queued` instead of sorting
             -- every queued task (which `queue = ANY(..)` would do).
             SELECT t.id FROM unnest($4::text[]) AS q(name)
             CROSS JOIN LATERAL (
                 SELECT id, priority, run_at FROM tasks
                 WHERE state = 'queued' AND queue = q.name
                   AND (expires_at IS NULL OR expires_at > $1)
                 ORDER BY priority DESC, run_at, id
                 LIMIT $5
                 FOR UPDATE SKIP LOCKED) AS t
             ORDER BY t.priority DESC, t.run_at, t.id
             LIMIT $5)
         RETURNING *",
    )
    .bind(req.now)
    .bind(&req.worker.0)
    .bind(req.lease_until)
    .bind(queue_list(&req.queues))
    .bind(i64::from(req.limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let mut claims = claims(&rows, req.lease_until)?;
    // RETURNING has no order; hand them out in claim order.
    claims.sort_by(|a, b| {
        b.task
            .priority
            .cmp(&a.task.priority)
            .then(a.task.scheduled_at.cmp(&b.task.scheduled_at))
            .then(a.task.id.cmp(&b.task.id))
    });
    Ok(claims)
}

/// Claims one task if it is runnable now: queued, or scheduled/retrying and due.
pub(super) async fn claim_one(
    tx: &mut PgConnection,
    id: TaskId,
    worker: &WorkerId,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<Claim>, StoreError> {
    Ok(claim_ids(tx, &[id], worker, now, lease_until).await?.pop())
}

/// Claims those of the given tasks that are runnable now, in one statement (a batch of hints).
pub(super) async fn claim_ids(
    tx: &mut PgConnection,
    ids: &[TaskId],
    worker: &WorkerId,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Vec<Claim>, StoreError> {
    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let rows = sqlx::query(
        "UPDATE tasks SET state = 'running', attempts = attempts + 1, started_at = $1,
             lease_owner = $2, lease_expires_at = $3
         WHERE id = ANY($4)
           AND (state = 'queued' OR (state IN ('scheduled', 'retrying') AND run_at <= $1))
           AND (expires_at IS NULL OR expires_at > $1)
         RETURNING *",
    )
    .bind(now)
    .bind(&worker.0)
    .bind(lease_until)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    claims(&rows, lease_until)
}

/// Extends the leases the worker still holds, in one statement; returns the others.
pub(super) async fn renew(
    tx: &mut PgConnection,
    worker: &WorkerId,
    leases: &[Lease],
    lease_until: DateTime<Utc>,
) -> Result<Vec<Lease>, StoreError> {
    let ids: Vec<String> = leases.iter().map(|l| l.task_id.to_string()).collect();
    let attempts: Vec<i32> = leases.iter().map(|l| l.attempt).collect();
    // `state = (SELECT 'running')`: the fence in a form the planner cannot match to the partial
    // index of running tasks, so each lease is looked up by id (see `finish_distinct`).
    let held: Vec<(String, i32)> = sqlx::query_as(
        "UPDATE tasks SET lease_expires_at = $1
         FROM unnest($2::text[], $3::int[]) AS l(id, attempt)
         WHERE tasks.id = l.id AND tasks.attempts = l.attempt
           AND tasks.state = (SELECT 'running'::text) AND tasks.lease_owner = $4
         RETURNING tasks.id, tasks.attempts",
    )
    .bind(lease_until)
    .bind(ids)
    .bind(attempts)
    .bind(&worker.0)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let held: HashSet<(String, i32)> = held.into_iter().collect();
    Ok(leases
        .iter()
        .filter(|l| !held.contains(&(l.task_id.to_string(), l.attempt)))
        .copied()
        .collect())
}

/// Records an attempt's outcome, fenced: only the running attempt with this number may finish.
pub(super) async fn finish(
    tx: &mut PgConnection,
    lease: Lease,
    finish: Finish,
    now: DateTime<Utc>,
) -> Result<Task, StoreError> {
    let o = Outcome::of(&finish, now);
    let row = sqlx::query(
        "UPDATE tasks SET state = $1, result = $2, error_kind = $3, error_message = $4,
             run_at = COALESCE($5, run_at), finished_at = $6, lease_owner = NULL,
             lease_expires_at = NULL, dispatched_at = NULL
         WHERE id = $7 AND attempts = $8 AND state = 'running'
         RETURNING *",
    )
    .bind(o.state.as_str())
    .bind(o.result.map(rows::jsonb))
    .bind(o.error.map(|e| rows::text(&e.kind)))
    .bind(o.error.map(|e| rows::text(&e.message)))
    .bind(o.run_at)
    .bind(o.finished_at)
    .bind(lease.task_id.to_string())
    .bind(lease.attempt)
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

/// Records a group of attempts' outcomes, each fenced on its own exactly as by [`finish`]: one
/// answer per item, in input order. An `Unavailable` error is the group's (the caller rolls back),
/// never an item's.
///
/// A group of distinct tasks is one UPDATE joined to the outcomes, whose WHERE fences every row as
/// `finish` does (a row another transaction changes meanwhile is re-checked against it under READ
/// COMMITTED), and one read for the refused items' existence. A group that names a task twice is
/// written item by item instead, so that the first outcome wins and the second is fenced, as if
/// finished one after the other; one joined UPDATE would apply only one of them, unpredictably.
pub(super) async fn finish_many(
    tx: &mut PgConnection,
    items: Vec<(Lease, Finish)>,
    now: DateTime<Utc>,
) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
    let distinct: HashSet<TaskId> = items.iter().map(|(l, _)| l.task_id).collect();
    if distinct.len() == items.len() {
        return finish_distinct(tx, &items, now).await;
    }
    let mut out = Vec::with_capacity(items.len());
    for (lease, finish) in items {
        out.push(match self::finish(&mut *tx, lease, finish, now).await {
            Err(StoreError::Unavailable(e)) => return Err(StoreError::Unavailable(e)),
            r => r,
        });
    }
    Ok(out)
}

/// [`finish_many`] for a group whose task ids are distinct.
async fn finish_distinct(
    tx: &mut PgConnection,
    items: &[(Lease, Finish)],
    now: DateTime<Utc>,
) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let outcomes: Vec<Outcome> = items.iter().map(|(_, f)| Outcome::of(f, now)).collect();
    let ids: Vec<String> = items.iter().map(|(l, _)| l.task_id.to_string()).collect();
    // `state = (SELECT 'running')` is the fence `state = 'running'` with a value the planner does
    // not see, so it looks each outcome's row up by id. Seen, it estimates the running tasks from
    // statistics, which may be from a quiet moment (none running), and reads every running task
    // per group through `tasks_leases` or `tasks_state`, a generic plan rescanning the outcomes
    // for each: with 20,000 running, 9-33 ms per 100-item group instead of 1-2 ms, and up to 1 s
    // per 512 items.
    let rows = sqlx::query(
        "UPDATE tasks SET state = f.state, result = f.result, error_kind = f.error_kind,
             error_message = f.error_message, run_at = COALESCE(f.run_at, tasks.run_at),
             finished_at = f.finished_at, lease_owner = NULL, lease_expires_at = NULL,
             dispatched_at = NULL
         FROM unnest($1::text[], $2::int[], $3::text[], $4::jsonb[], $5::text[], $6::text[],
                 $7::timestamptz[], $8::timestamptz[])
             AS f(id, attempt, state, result, error_kind, error_message, run_at, finished_at)
         WHERE tasks.id = f.id AND tasks.attempts = f.attempt
           AND tasks.state = (SELECT 'running'::text)
         RETURNING tasks.*",
    )
    .bind(&ids)
    .bind(items.iter().map(|(l, _)| l.attempt).collect::<Vec<i32>>())
    .bind(
        outcomes
            .iter()
            .map(|o| o.state.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.result.map(rows::jsonb))
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.error.map(|e| rows::text(&e.kind)))
            .collect::<Vec<_>>(),
    )
    .bind(
        outcomes
            .iter()
            .map(|o| o.error.map(|e| rows::text(&e.message)))
            .collect::<Vec<_>>(),
    )
    .bind(outcomes.iter().map(|o| o.run_at).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.finished_at).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    // RETURNING has no order: match the rows to the items by the id each was sent with.
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut out: Vec<Option<Result<Task, StoreError>>> = items.iter().map(|_| None).collect();
    for row in &rows {
        let id: String = row.try_get("id").map_err(|e| rows::corrupt("id", e))?;
        let i = *index
            .get(id.as_str())
            .ok_or_else(|| rows::corrupt("id", format!("{id} was not in the group")))?;
        out[i] = Some(rows::task(row));
    }
    let unapplied: Vec<&str> = ids
        .iter()
        .zip(&out)
        .filter(|(_, r)| r.is_none())
        .map(|(id, _)| id.as_str())
        .collect();
    let existing: HashSet<String> = if unapplied.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar("SELECT id FROM tasks WHERE id = ANY($1)")
            .bind(&unapplied)
            .fetch_all(&mut *tx)
            .await
            .map_err(db_err)?
            .into_iter()
            .collect()
    };
    Ok(out
        .into_iter()
        .zip(items.iter().zip(&ids))
        .map(|(r, ((lease, _), id))| {
            r.unwrap_or_else(|| Err(refused(*lease, existing.contains(id))))
        })
        .collect())
}

/// Hands a running attempt back to the queue (graceful shutdown). The attempt number stays
/// consumed, so the fencing token is never reused.
pub(super) async fn release(
    tx: &mut PgConnection,
    lease: Lease,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE tasks SET state = 'queued', run_at = $1, lease_owner = NULL,
             lease_expires_at = NULL, dispatched_at = NULL
         WHERE id = $2 AND attempts = $3 AND state = 'running'",
    )
    .bind(now)
    .bind(lease.task_id.to_string())
    .bind(lease.attempt)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(super) async fn next_ready_at(
    pool: &PgPool,
    queues: &[QueueName],
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let (at,): (Option<DateTime<Utc>>,) = sqlx::query_as(
        "SELECT min(run_at) FROM tasks
         WHERE state IN ('scheduled', 'retrying') AND queue = ANY($1)",
    )
    .bind(queue_list(queues))
    .fetch_one(pool)
    .await
    .map_err(db_err)?;
    Ok(at)
}

/// Returns each task whose lease expired to the queue, or fails it when no retry is left. One
/// UPDATE over rows nobody else holds, so each expired attempt is reaped once however many reapers
/// run, and a finish in flight (which holds its row) wins over the reaper.
pub(super) async fn reap(
    tx: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<Reaped>, StoreError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "UPDATE tasks SET
             state = CASE WHEN attempts > max_retries THEN 'failed' ELSE 'queued' END,
             finished_at = CASE WHEN attempts > max_retries THEN $1 END,
             error_kind = 'lease_expired',
             error_message = 'the worker running this attempt stopped renewing its lease',
             run_at = $1, lease_owner = NULL, lease_expires_at = NULL, dispatched_at = NULL
         WHERE id IN (
             SELECT id FROM tasks WHERE state = 'running' AND lease_expires_at < $1
             FOR UPDATE SKIP LOCKED)
         RETURNING id, state",
    )
    .bind(now)
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

/// Marks the scheduled and queued tasks past their `expires_at` as `expired`.
pub(super) async fn expire(tx: &mut PgConnection, now: DateTime<Utc>) -> Result<u64, StoreError> {
    let r = sqlx::query(
        "UPDATE tasks SET state = 'expired', finished_at = $1
         WHERE id IN (
             SELECT id FROM tasks
             WHERE state IN ('scheduled', 'queued') AND expires_at IS NOT NULL AND expires_at <= $1
             FOR UPDATE SKIP LOCKED)",
    )
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected())
}
