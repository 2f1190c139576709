//! Job SQL for SQLite, and `fire_due`: claiming a due job, inserting its fires' tasks and history and
//! advancing `next_run_at` in one transaction.

use chrono::{DateTime, Utc};
use idem_core::job::{plan_fires, FireOutcome};
use idem_core::store::{JobFilter, Page, PageRequest};
use idem_core::{FireRecord, Job, JobId, JobState, StoreError};
use sqlx::{SqliteConnection, SqlitePool};

use super::{ms, rows, tasks};
use crate::db_err;

pub(super) async fn create(
    tx: &mut SqliteConnection,
    job: Job,
    replace: bool,
) -> Result<Job, StoreError> {
    if get(&mut *tx, &job.spec.id).await?.is_some() {
        if !replace {
            return Err(StoreError::JobExists(job.spec.id));
        }
        sqlx::query("DELETE FROM jobs WHERE id = ?")
            .bind(job.spec.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    let s = &job.spec;
    let row = sqlx::query(
        "INSERT INTO jobs (id, name, task, args, trigger, misfire_grace_seconds, coalesce,
             max_instances, jitter_seconds, queue, priority, max_retries, timeout_seconds,
             idempotency_ttl_seconds, state, next_run_at, last_run_at, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         RETURNING *",
    )
    .bind(s.id.as_str())
    .bind(s.name.as_deref())
    .bind(s.task.as_str())
    .bind(s.args.to_string())
    .bind(serde_json::to_string(&s.trigger).expect("triggers serialize"))
    .bind(s.misfire_grace_seconds)
    .bind(s.coalesce)
    .bind(i64::from(s.max_instances))
    .bind(s.jitter_seconds)
    .bind(s.queue.as_str())
    .bind(i64::from(s.priority))
    .bind(i64::from(s.max_retries))
    .bind(s.timeout_seconds)
    .bind(s.idempotency_ttl_seconds)
    .bind(job.state.as_str())
    .bind(job.next_run_at.map(ms))
    .bind(job.last_run_at.map(ms))
    .bind(ms(job.created_at))
    .bind(ms(job.updated_at))
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    rows::job(&row)
}

pub(super) async fn get<'e, E>(ex: E, id: &JobId) -> Result<Option<Job>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let row = sqlx::query("SELECT * FROM jobs WHERE id = ?")
        .bind(id.as_str())
        .fetch_optional(ex)
        .await
        .map_err(db_err)?;
    row.as_ref().map(rows::job).transpose()
}

/// Ordered by id; the cursor is the last id of the previous page.
pub(super) async fn list(
    pool: &SqlitePool,
    f: &JobFilter,
    page: &PageRequest,
) -> Result<Page<Job>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM jobs
         WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR task = ?2) AND (?3 IS NULL OR id > ?3)
         ORDER BY id LIMIT ?4",
    )
    .bind(f.state.map(|s| s.as_str()))
    .bind(f.task.as_ref().map(|t| t.as_str()))
    .bind(page.after.as_deref())
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
pub(super) async fn update(tx: &mut SqliteConnection, job: Job) -> Result<Option<Job>, StoreError> {
    let s = &job.spec;
    let row = sqlx::query(
        "UPDATE jobs SET name = ?, task = ?, args = ?, trigger = ?, misfire_grace_seconds = ?,
             coalesce = ?, max_instances = ?, jitter_seconds = ?, queue = ?, priority = ?,
             max_retries = ?, timeout_seconds = ?, idempotency_ttl_seconds = ?, state = ?,
             next_run_at = ?, updated_at = ?
         WHERE id = ? RETURNING *",
    )
    .bind(s.name.as_deref())
    .bind(s.task.as_str())
    .bind(s.args.to_string())
    .bind(serde_json::to_string(&s.trigger).expect("triggers serialize"))
    .bind(s.misfire_grace_seconds)
    .bind(s.coalesce)
    .bind(i64::from(s.max_instances))
    .bind(s.jitter_seconds)
    .bind(s.queue.as_str())
    .bind(i64::from(s.priority))
    .bind(i64::from(s.max_retries))
    .bind(s.timeout_seconds)
    .bind(s.idempotency_ttl_seconds)
    .bind(job.state.as_str())
    .bind(job.next_run_at.map(ms))
    .bind(ms(job.updated_at))
    .bind(s.id.as_str())
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    row.as_ref().map(rows::job).transpose()
}

/// Deletes the job and its history; its tasks stay (and unfinished ones keep running).
pub(super) async fn delete(tx: &mut SqliteConnection, id: &JobId) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM jobs WHERE id = ?")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    sqlx::query("DELETE FROM job_runs WHERE job_id = ?")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() > 0)
}

pub(super) async fn runs(
    pool: &SqlitePool,
    id: &JobId,
    limit: u32,
) -> Result<Vec<FireRecord>, StoreError> {
    let rows =
        sqlx::query("SELECT * FROM job_runs WHERE job_id = ? ORDER BY scheduled_at DESC LIMIT ?")
            .bind(id.as_str())
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(db_err)?;
    rows.iter().map(rows::fire).collect()
}

pub(super) async fn next_fire_at(pool: &SqlitePool) -> Result<Option<DateTime<Utc>>, StoreError> {
    let (at,): (Option<i64>,) =
        sqlx::query_as("SELECT min(next_run_at) FROM jobs WHERE state = 'active'")
            .fetch_one(pool)
            .await
            .map_err(db_err)?;
    Ok(at.map(idem_core::time::from_ms))
}

/// Fires up to `limit` due jobs inside the caller's (immediate) transaction.
pub(super) async fn fire_due(
    tx: &mut SqliteConnection,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<FireRecord>, StoreError> {
    let rows = sqlx::query(
        "SELECT * FROM jobs WHERE state = 'active' AND next_run_at <= ? ORDER BY next_run_at LIMIT ?",
    )
    .bind(ms(now))
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let jobs = rows.iter().map(rows::job).collect::<Result<Vec<_>, _>>()?;
    let mut records = Vec::new();
    for job in jobs {
        let (unfinished,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM tasks
             WHERE job_id = ? AND state IN ('scheduled', 'queued', 'running', 'retrying')",
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
                 VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(job.spec.id.as_str())
            .bind(ms(fire.scheduled_at))
            .bind(fire.outcome.as_str())
            .bind(ms(now))
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
                let id = tasks::submit_one(tx, t, now, 0).await?.task.id;
                task_id = Some(id);
                last_fired = Some(fire.scheduled_at);
                sqlx::query(
                    "UPDATE job_runs SET task_id = ? WHERE job_id = ? AND scheduled_at = ?",
                )
                .bind(id.to_string())
                .bind(job.spec.id.as_str())
                .bind(ms(fire.scheduled_at))
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
            "UPDATE jobs SET next_run_at = ?, last_run_at = COALESCE(?, last_run_at), state = ?
             WHERE id = ?",
        )
        .bind(plan.next_run_at.map(ms))
        .bind(last_fired.map(ms))
        .bind(state.as_str())
        .bind(job.spec.id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    }
    Ok(records)
}
