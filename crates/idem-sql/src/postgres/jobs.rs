//! Job SQL for PostgreSQL, and its statements of the shared fire loop ([`crate::fire`]): due jobs
//! are locked with `FOR UPDATE SKIP LOCKED`, so schedulers split them instead of queueing on each
//! other.
//!
//! Invariant: every write of a job moves its `version` on, and the API's writes are compare-and-set
//! on it, so a write based on a stale read changes nothing.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use idem_core::store::{Cas, JobFilter, Page, PageRequest};
use idem_core::{FireRecord, Job, JobId, NewTask, StoreError};
use sqlx::{PgConnection, PgPool, Row};

use super::{rows, submit};
use crate::db_err;
use crate::fire::{Advance, DueJob, FireSteps, FireSubmit, Slot};

/// Inserts a job; an existing one is overwritten only when `replace` (else `JobExists`). One
/// statement, so two creators of one id never both succeed without `replace`. A replacing job's
/// version continues the old one's, so a version read before the replacement never matches after.
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
             created_at = excluded.created_at, updated_at = excluded.updated_at,
             version = jobs.version + 1, quarantine_reason = NULL
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

/// Overwrites the definition, state and next fire if the version is still `expected`; keeps
/// `created_at` and `last_run_at`. A job that leaves `quarantined` drops its reason.
pub(super) async fn update(
    tx: &mut PgConnection,
    job: Job,
    expected: i64,
) -> Result<Cas<Job>, StoreError> {
    let s = &job.spec;
    let row = sqlx::query(
        "UPDATE jobs SET name = $1, task = $2, args = $3, trigger = $4, misfire_grace_seconds = $5,
             coalesce = $6, max_instances = $7, jitter_seconds = $8, queue = $9, priority = $10,
             max_retries = $11, timeout_seconds = $12, idempotency_ttl_seconds = $13, state = $14,
             next_run_at = $15, updated_at = $16, version = version + 1,
             quarantine_reason = CASE WHEN $14 = 'quarantined' THEN quarantine_reason END
         WHERE id = $17 AND version = $18 RETURNING *",
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
    .bind(expected)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    match row {
        Some(row) => Ok(Cas::Done(rows::job(&row)?)),
        None => stale_or_missing(tx, &s.id).await,
    }
}

async fn stale_or_missing<T>(tx: &mut PgConnection, id: &JobId) -> Result<Cas<T>, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE id = $1")
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(if n == 0 { Cas::NotFound } else { Cas::Stale })
}

/// Deletes the job (if its version is still `expected`, when given) and its history; its tasks stay
/// (and unfinished ones keep running).
pub(super) async fn delete(
    tx: &mut PgConnection,
    id: &JobId,
    expected: Option<i64>,
) -> Result<Cas<()>, StoreError> {
    let r = sqlx::query("DELETE FROM jobs WHERE id = $1 AND ($2::bigint IS NULL OR version = $2)")
        .bind(id.as_str())
        .bind(expected)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    if r.rows_affected() == 0 {
        return stale_or_missing(tx, id).await;
    }
    sqlx::query("DELETE FROM job_runs WHERE job_id = $1")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(Cas::Done(()))
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

/// The PostgreSQL statements of the shared fire loop ([`crate::fire`]), on the caller's transaction.
pub(super) struct Fire<'c>(pub(super) &'c mut PgConnection);

#[async_trait]
impl FireSteps for Fire<'_> {
    /// Locks the due jobs; jobs another scheduler holds are skipped: that scheduler is firing them.
    async fn due_jobs(
        &mut self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueJob>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE state = 'active' AND next_run_at <= $1
             ORDER BY next_run_at LIMIT $2
             FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.0)
        .await
        .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|row| match rows::job(row) {
                Ok(job) => DueJob::Decoded(job),
                Err(e) => DueJob::Undecodable {
                    id: row.try_get::<String, _>("id").unwrap_or_default(),
                    reason: e.to_string(),
                },
            })
            .collect())
    }

    async fn unfinished_tasks(
        &mut self,
        jobs: &[JobId],
    ) -> Result<HashMap<JobId, i64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT job_id, count(*) FROM tasks
             WHERE job_id = ANY($1) AND state IN ('scheduled', 'queued', 'running', 'retrying')
             GROUP BY job_id",
        )
        .bind(jobs.iter().map(|j| j.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut *self.0)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|(id, n)| {
                Ok((
                    JobId::try_from(id).map_err(|e| rows::corrupt("job_id", e))?,
                    n,
                ))
            })
            .collect()
    }

    async fn guard_slots(
        &mut self,
        slots: &[Slot],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError> {
        let fresh: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            // Recorded when the slots are decided (the database's clock), not when the pass
            // began: a long pass shows as lateness.
            "INSERT INTO job_runs (job_id, scheduled_at, outcome, task_id, recorded_at)
             SELECT job_id, scheduled_at, outcome, task_id, GREATEST($5, clock_timestamp())
             FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[])
                 AS s(job_id, scheduled_at, outcome, task_id)
             ON CONFLICT DO NOTHING
             RETURNING job_id, scheduled_at",
        )
        .bind(slots.iter().map(|s| s.job.as_str()).collect::<Vec<_>>())
        .bind(slots.iter().map(|s| s.at).collect::<Vec<_>>())
        .bind(slots.iter().map(|s| s.outcome.as_str()).collect::<Vec<_>>())
        .bind(
            slots
                .iter()
                .map(|s| s.task.map(|t| t.to_string()))
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .fetch_all(&mut *self.0)
        .await
        .map_err(db_err)?;
        // Matched on whole microseconds: the bound times reach the table truncated to PostgreSQL's
        // precision, and a slot with nanoseconds must still be found as the one inserted. Two
        // slots that truncate alike are one row: only the first is this call's (the later one is a
        // slot already recorded, as it would be in a later statement).
        let mut fresh: HashSet<(String, i64)> = fresh
            .into_iter()
            .map(|(job, at)| (job, at.timestamp_micros()))
            .collect();
        Ok(slots
            .iter()
            .map(|s| fresh.remove(&(s.job.as_str().to_owned(), s.at.timestamp_micros())))
            .collect())
    }

    async fn submit_fires(
        &mut self,
        tasks: Vec<NewTask>,
        now: DateTime<Utc>,
    ) -> Result<Vec<FireSubmit>, StoreError> {
        submit::submit_fires(self.0, tasks, now).await
    }

    async fn record_slots(&mut self, slots: &[Slot]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE job_runs SET outcome = s.outcome, task_id = s.task_id
             FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[])
                 AS s(job_id, scheduled_at, outcome, task_id)
             WHERE job_runs.job_id = s.job_id AND job_runs.scheduled_at = s.scheduled_at",
        )
        .bind(slots.iter().map(|s| s.job.as_str()).collect::<Vec<_>>())
        .bind(slots.iter().map(|s| s.at).collect::<Vec<_>>())
        .bind(slots.iter().map(|s| s.outcome.as_str()).collect::<Vec<_>>())
        .bind(
            slots
                .iter()
                .map(|s| s.task.map(|t| t.to_string()))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *self.0)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn advance(&mut self, jobs: &[Advance]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET next_run_at = a.next_run_at,
                 last_run_at = COALESCE(a.last_fired, jobs.last_run_at), state = a.state,
                 version = jobs.version + 1
             FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[])
                 AS a(id, next_run_at, last_fired, state)
             WHERE jobs.id = a.id",
        )
        .bind(jobs.iter().map(|a| a.job.as_str()).collect::<Vec<_>>())
        .bind(jobs.iter().map(|a| a.next_run_at).collect::<Vec<_>>())
        .bind(jobs.iter().map(|a| a.last_fired).collect::<Vec<_>>())
        .bind(jobs.iter().map(|a| a.state.as_str()).collect::<Vec<_>>())
        .execute(&mut *self.0)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn quarantine(
        &mut self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET state = 'quarantined', quarantine_reason = $1, updated_at = $2,
                 version = version + 1
             WHERE id = $3",
        )
        .bind(rows::text(reason))
        .bind(now)
        .bind(id)
        .execute(&mut *self.0)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
