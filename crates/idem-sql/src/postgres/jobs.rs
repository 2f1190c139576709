//! Job SQL for PostgreSQL, and `fire_due`: locking due jobs (`FOR UPDATE SKIP LOCKED`, so
//! schedulers split the due jobs between them instead of queueing on each other), inserting their
//! fires' tasks and history and advancing `next_run_at` in one transaction.
//!
//! Invariant: a fire is recorded by inserting its `(job_id, scheduled_at)` history row, and only
//! the transaction whose insert succeeds makes its task, so each slot fires once.

use chrono::{DateTime, Utc};
use idem_core::job::{plan_fires, FireOutcome};
use idem_core::store::{JobFilter, Page, PageRequest};
use idem_core::{FireRecord, Job, JobId, JobState, StoreError};
use sqlx::{PgConnection, PgPool};

use super::{rows, submit};
use crate::db_err;

/// Inserts a job; an existing one is overwritten only when `replace` (else `JobExists`). One
/// statement, so two creators of one id never both succeed without `replace`.
pub(super) async fn create(
    tx: &mut PgConnection,
    job: Job,
    replace: bool,
) -> Result<Job, StoreError> {
    let s = &job.spec;
    let row = sqlx::query(
        "INSERT INTO jobs (id, name, task, args, trigger, misfire_grace_seconds, coalesce,
             max_instances, jitter_seconds, queue, priority, max_retries, timeout_seconds,
             idempotency_ttl_seconds, state, next_run_at, last_run_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
             $19)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, task = excluded.task,
             args = excluded.args, trigger = excluded.trigger,
             misfire_grace_seconds = excluded.misfire_grace_seconds, coalesce = excluded.coalesce,
             max_instances = excluded.max_instances, jitter_seconds = excluded.jitter_seconds,
             queue = excluded.queue, priority = excluded.priority,
             max_retries = excluded.max_retries, timeout_seconds = excluded.timeout_seconds,
             idempotency_ttl_seconds = excluded.idempotency_ttl_seconds, state = excluded.state,
             next_run_at = excluded.next_run_at, last_run_at = excluded.last_run_at,
             created_at = excluded.created_at, updated_at = excluded.updated_at
         WHERE $20
         RETURNING *",
    )
    .bind(s.id.as_str())
    .bind(s.name.as_deref().map(rows::text))
    .bind(s.task.as_str())
    .bind(rows::jsonb(&s.args))
    .bind(sqlx::types::Json(&s.trigger))
    .bind(s.misfire_grace_seconds)
    .bind(s.coalesce)
    .bind(s.max_instances)
    .bind(s.jitter_seconds)
    .bind(s.queue.as_str())
    .bind(s.priority)
    .bind(s.max_retries)
    .bind(s.timeout_seconds)
    .bind(s.idempotency_ttl_seconds)
    .bind(job.state.as_str())
    .bind(job.next_run_at)
    .bind(job.last_run_at)
    .bind(job.created_at)
    .bind(job.updated_at)
    .bind(replace)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    match row {
        Some(row) => rows::job(&row),
        None => Err(StoreError::JobExists(job.spec.id)),
    }
}

pub(super) async fn get(pool: &PgPool, id: &JobId) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
        .map_err(db_err)?;
    row.as_ref().map(rows::job).transpose()
}

/// Ordered by id; the cursor is the last id of the previous page.
pub(super) async fn list(
    pool: &PgPool,
    f: &JobFilter,
    page: &PageRequest,
) -> Result<Page<Job>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM jobs
         WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR task = $2)
           AND ($3::text IS NULL OR id > $3)
         ORDER BY id LIMIT $4",
    )
    .bind(f.state.map(|s| s.as_str()))
    .bind(f.task.as_ref().map(|t| t.as_str()))
    .bind(page.after.as_deref().map(rows::text))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    let items = rows.iter().map(rows::job).collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_overfetch(items, page.limit, |j| {
        j.spec.id.to_string()
    }))
}

/// Overwrites the definition, state and next fire; keeps `created_at` and `last_run_at`.
pub(super) async fn update(tx: &mut PgConnection, job: Job) -> Result<Option<Job>, StoreError> {
    let s = &job.spec;
    let row = sqlx::query(
        "UPDATE jobs SET name = $1, task = $2, args = $3, trigger = $4, misfire_grace_seconds = $5,
             coalesce = $6, max_instances = $7, jitter_seconds = $8, queue = $9, priority = $10,
             max_retries = $11, timeout_seconds = $12, idempotency_ttl_seconds = $13, state = $14,
             next_run_at = $15, updated_at = $16
         WHERE id = $17 RETURNING *",
    )
    .bind(s.name.as_deref().map(rows::text))
    .bind(s.task.as_str())
    .bind(rows::jsonb(&s.args))
    .bind(sqlx::types::Json(&s.trigger))
    .bind(s.misfire_grace_seconds)
    .bind(s.coalesce)
    .bind(s.max_instances)
    .bind(s.jitter_seconds)
    .bind(s.queue.as_str())
    .bind(s.priority)
    .bind(s.max_retries)
    .bind(s.timeout_seconds)
    .bind(s.idempotency_ttl_seconds)
    .bind(job.state.as_str())
    .bind(job.next_run_at)
    .bind(job.updated_at)
    .bind(s.id.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    row.as_ref().map(rows::job).transpose()
}

/// Deletes the job and its history; its tasks stay (and unfinished ones keep running).
pub(super) async fn delete(tx: &mut PgConnection, id: &JobId) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM jobs WHERE id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM job_runs WHERE job_id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() > 0)
}

pub(super) async fn runs(
    pool: &PgPool,
    id: &JobId,
    limit: u32,
) -> Result<Vec<FireRecord>, StoreError> {
    let rows =
        sqlx::query("SELECT * FROM job_runs WHERE job_id = $1 ORDER BY scheduled_at DESC LIMIT $2")
            .bind(id.as_str())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(db_err)?;
    rows.iter().map(rows::fire).collect()
}

pub(super) async fn next_fire_at(pool: &PgPool) -> Result<Option<DateTime<Utc>>, StoreError> {
    let (at,): (Option<DateTime<Utc>>,) =
        sqlx::query_as("SELECT min(next_run_at) FROM jobs WHERE state = 'active'")
            .fetch_one(pool)
            .await
            .map_err(db_err)?;
    Ok(at)
}

/// Fires up to `limit` due jobs inside the caller's transaction. Jobs another scheduler holds are
/// skipped: that scheduler is firing them.
pub(super) async fn fire_due(
    tx: &mut PgConnection,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<FireRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM jobs WHERE state = 'active' AND next_run_at <= $1
         ORDER BY next_run_at LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let jobs = rows.iter().map(rows::job).collect::<Result<Vec<_>, _>>()?;
    let mut records = Vec::new();
    for job in jobs {
        let (unfinished,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM tasks
             WHERE job_id = $1 AND state IN ('scheduled', 'queued', 'running', 'retrying')",
        )
        .bind(job.spec.id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let plan = plan_fires(&job, now, unfinished);
        let mut last_fired = None;
        for fire in &plan.fires {
            // The history row is the fire's guard: a slot already recorded is never fired again.
            let fresh = sqlx::query(
                "INSERT INTO job_runs (job_id, scheduled_at, outcome, recorded_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(job.spec.id.as_str())
            .bind(fire.scheduled_at)
            .bind(fire.outcome.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected()
                == 1;
            if !fresh {
                continue;
            }
            let mut task_id = None;
            if fire.outcome == FireOutcome::Fired {
                let t = job.fire_task(fire.scheduled_at, fire.run_at);
                // A replay (the slot's key is live) finds the task this slot already made.
                let id = submit::submit_one(tx, t, now, 0).await?.task.id;
                task_id = Some(id);
                last_fired = Some(fire.scheduled_at);
                sqlx::query(
                    "UPDATE job_runs SET task_id = $1 WHERE job_id = $2 AND scheduled_at = $3",
                )
                .bind(id.to_string())
                .bind(job.spec.id.as_str())
                .bind(fire.scheduled_at)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            records.push(FireRecord {
                job_id: job.spec.id.clone(),
                scheduled_at: fire.scheduled_at,
                task_id,
                outcome: fire.outcome,
                recorded_at: now,
            });
        }
        let state = if plan.finished {
            JobState::Finished
        } else {
            JobState::Active
        };
        sqlx::query(
            "UPDATE jobs SET next_run_at = $1, last_run_at = COALESCE($2, last_run_at), state = $3
             WHERE id = $4",
        )
        .bind(plan.next_run_at)
        .bind(last_fired)
        .bind(state.as_str())
        .bind(job.spec.id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    Ok(records)
}
