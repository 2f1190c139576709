//! Job SQL for SQLite, and its statements of the shared fire loop ([`crate::fire`]).
//!
//! Invariant: every write of a job moves its `version` on, and the API's writes are compare-and-set
//! on it, so a write based on a stale read changes nothing.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use idem_core::store::{Cas, JobFilter, Page, PageRequest};
use idem_core::{FireRecord, Job, JobId, NewTask, StoreError};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{ms, rows, tasks};
use crate::db_err;
use crate::fire::{Advance, DueJob, FireSteps, FireSubmit, Slot};

/// Inserts a job, or replaces one with the same id when `replace`. A replacing job's version
/// continues the old one's, so a version read before the replacement never matches after it.
pub(super) async fn create(
    tx: &mut SqliteConnection,
    job: Job,
    replace: bool,
) -> Result<Job, StoreError> {
    let mut version = 1;
    if let Some(old) = get(&mut *tx, &job.spec.id).await? {
        if !replace {
            return Err(StoreError::JobExists(job.spec.id));
        }
        version = old.version + 1;
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
             idempotency_ttl_seconds, state, next_run_at, last_run_at, created_at, updated_at,
             version, quarantine_reason)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)
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
    .bind(version)
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

/// Overwrites the definition, state and next fire if the version is still `expected`; keeps
/// `created_at` and `last_run_at`. A job that leaves `quarantined` drops its reason.
pub(super) async fn update(
    tx: &mut SqliteConnection,
    job: Job,
    expected: i64,
) -> Result<Cas<Job>, StoreError> {
    let s = &job.spec;
    let row = sqlx::query(
        "UPDATE jobs SET name = ?, task = ?, args = ?, trigger = ?, misfire_grace_seconds = ?,
             coalesce = ?, max_instances = ?, jitter_seconds = ?, queue = ?, priority = ?,
             max_retries = ?, timeout_seconds = ?, idempotency_ttl_seconds = ?, state = ?,
             next_run_at = ?, updated_at = ?, version = version + 1,
             quarantine_reason = CASE WHEN ? = 'quarantined' THEN quarantine_reason END
         WHERE id = ? AND version = ? RETURNING *",
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
    .bind(job.state.as_str())
    .bind(s.id.as_str())
    .bind(expected)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    match row {
        Some(row) => Ok(Cas::Done(rows::job(&row)?)),
        None => Ok(stale_or_missing(tx, &s.id).await?),
    }
}

async fn stale_or_missing<T>(tx: &mut SqliteConnection, id: &JobId) -> Result<Cas<T>, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE id = ?")
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(if n == 0 { Cas::NotFound } else { Cas::Stale })
}

/// Deletes the job (if its version is still `expected`, when given) and its history; its tasks stay
/// (and unfinished ones keep running).
pub(super) async fn delete(
    tx: &mut SqliteConnection,
    id: &JobId,
    expected: Option<i64>,
) -> Result<Cas<()>, StoreError> {
    let r = sqlx::query("DELETE FROM jobs WHERE id = ?1 AND (?2 IS NULL OR version = ?2)")
        .bind(id.as_str())
        .bind(expected)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    if r.rows_affected() == 0 {
        return stale_or_missing(tx, id).await;
    }
    sqlx::query("DELETE FROM job_runs WHERE job_id = ?")
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(Cas::Done(()))
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

/// The SQLite statements of the shared fire loop ([`crate::fire`]), on the caller's immediate
/// transaction (which already excludes every other writer, so no row lock is needed).
pub(super) struct Fire<'c>(pub(super) &'c mut SqliteConnection);

#[async_trait]
impl FireSteps for Fire<'_> {
    async fn due_jobs(
        &mut self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueJob>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM jobs WHERE state = 'active' AND next_run_at <= ?
             ORDER BY next_run_at LIMIT ?",
        )
        .bind(ms(now))
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

    // SQLite runs in-process: a statement per item costs a hand-off to the connection's thread, not
    // a network round trip, so these steps stay one statement per item (each prepared once).

    async fn unfinished_tasks(
        &mut self,
        jobs: &[JobId],
    ) -> Result<HashMap<JobId, i64>, StoreError> {
        let mut out = HashMap::with_capacity(jobs.len());
        for job in jobs {
            let (n,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM tasks
                 WHERE job_id = ? AND state IN ('scheduled', 'queued', 'running', 'retrying')",
            )
            .bind(job.as_str())
            .fetch_one(&mut *self.0)
            .await
            .map_err(db_err)?;
            out.insert(job.clone(), n);
        }
        Ok(out)
    }

    async fn guard_slots(
        &mut self,
        slots: &[Slot],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError> {
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            let r = sqlx::query(
                "INSERT INTO job_runs (job_id, scheduled_at, outcome, task_id, recorded_at)
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(slot.job.as_str())
            .bind(ms(slot.at))
            .bind(slot.outcome.as_str())
            .bind(slot.task.map(|t| t.to_string()))
            // When the slot is decided, not when the pass began: a long pass shows as lateness.
            .bind(ms(now).max(Utc::now().timestamp_millis()))
            .execute(&mut *self.0)
            .await
            .map_err(db_err)?;
            out.push(r.rows_affected() == 1);
        }
        Ok(out)
    }

    async fn submit_fires(
        &mut self,
        tasks: Vec<NewTask>,
        now: DateTime<Utc>,
    ) -> Result<Vec<FireSubmit>, StoreError> {
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks {
            out.push(match tasks::submit_one(self.0, task, now, 0).await {
                Ok(s) => FireSubmit::Submitted(s),
                Err(StoreError::KeyConflict { .. }) => FireSubmit::KeyConflict,
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    }

    async fn record_slots(&mut self, slots: &[Slot]) -> Result<(), StoreError> {
        for slot in slots {
            sqlx::query(
                "UPDATE job_runs SET outcome = ?, task_id = ? WHERE job_id = ? AND scheduled_at = ?",
            )
            .bind(slot.outcome.as_str())
            .bind(slot.task.map(|t| t.to_string()))
            .bind(slot.job.as_str())
            .bind(ms(slot.at))
            .execute(&mut *self.0)
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }

    async fn advance(&mut self, jobs: &[Advance]) -> Result<(), StoreError> {
        for a in jobs {
            sqlx::query(
                "UPDATE jobs SET next_run_at = ?, last_run_at = COALESCE(?, last_run_at), state = ?,
                     version = version + 1
                 WHERE id = ?",
            )
            .bind(a.next_run_at.map(ms))
            .bind(a.last_fired.map(ms))
            .bind(a.state.as_str())
            .bind(a.job.as_str())
            .execute(&mut *self.0)
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }

    async fn quarantine(
        &mut self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET state = 'quarantined', quarantine_reason = ?, updated_at = ?,
                 version = version + 1
             WHERE id = ?",
        )
        .bind(reason)
        .bind(ms(now))
        .bind(id)
        .execute(&mut *self.0)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
