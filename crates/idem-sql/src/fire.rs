//! `fire_due` for every dialect: the one loop that turns due jobs into fires, over a small
//! crate-private trait of per-dialect statements ([`FireSteps`]), so that a fix to the loop lands
//! once for SQLite and PostgreSQL.
//!
//! Invariants, all inside the caller's one transaction:
//! - a slot is fired at most once: its history row (primary key `job_id, scheduled_at`) is inserted
//!   first and is the guard — a slot already recorded is skipped;
//! - every slot the loop looks at ends with a history row: `fired` (with its task), `missed`,
//!   `skipped_overlap`, or `key_conflict` when the slot's key is held by another request — a conflict
//!   is an outcome of that slot, never an error of the pass;
//! - a job that cannot be decoded or planned is quarantined (state `quarantined`, with the reason),
//!   and the loop goes on with the other jobs;
//! - `next_run_at` moves past every slot planned, and the job's version moves on with each write.

use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use idem_core::job::{check_plannable, plan_fires, FirePass, FirePlan, Quarantined};
use idem_core::TaskId;
use idem_core::{FireOutcome, FireRecord, Job, JobId, JobState, NewTask, StoreError, Submitted};

/// A due job as read: decoded, or the raw id of a row that could not be.
#[allow(clippy::large_enum_variant)] // short-lived, one per due row
pub(crate) enum DueJob {
    Decoded(Job),
    Undecodable { id: String, reason: String },
}

/// The statements one dialect runs for [`fire_due`], inside its open transaction.
#[async_trait]
pub(crate) trait FireSteps: Send {
    /// Active jobs with `next_run_at <= now`, earliest first, at most `limit`; PostgreSQL locks them
    /// and skips rows another scheduler holds (that scheduler is firing them).
    async fn due_jobs(&mut self, now: DateTime<Utc>, limit: u32)
        -> Result<Vec<DueJob>, StoreError>;
    /// How many of the job's tasks are not final (for `max_instances`).
    async fn unfinished_tasks(&mut self, job: &JobId) -> Result<i64, StoreError>;
    /// Inserts the slot's history row unless it exists; `true` when this call inserted it.
    async fn guard_slot(
        &mut self,
        job: &JobId,
        slot: DateTime<Utc>,
        outcome: FireOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Submits the fire's task (a replay finds the task an earlier fire of the slot made).
    async fn submit(&mut self, task: NewTask, now: DateTime<Utc>) -> Result<Submitted, StoreError>;
    /// Sets the slot's final outcome and task on its history row.
    async fn record_slot(
        &mut self,
        job: &JobId,
        slot: DateTime<Utc>,
        outcome: FireOutcome,
        task: Option<TaskId>,
    ) -> Result<(), StoreError>;
    /// Moves the job on: its next fire, its last fired slot (if any) and its state; bumps the version.
    async fn advance(
        &mut self,
        job: &JobId,
        next_run_at: Option<DateTime<Utc>>,
        last_fired: Option<DateTime<Utc>>,
        state: JobState,
    ) -> Result<(), StoreError>;
    /// Sets the job aside (state `quarantined`, with the reason); bumps the version.
    async fn quarantine(
        &mut self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// Fires up to `limit` due jobs through `tx` (see the module invariants).
pub(crate) async fn fire_due(
    tx: &mut dyn FireSteps,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<FirePass, StoreError> {
    let due = tx.due_jobs(now, limit).await?;
    let mut pass = FirePass {
        jobs: due.len(),
        ..FirePass::default()
    };
    for row in due {
        let job = match row {
            DueJob::Decoded(job) => job,
            DueJob::Undecodable { id, reason } => {
                quarantine(tx, &mut pass, id, reason, now).await?;
                continue;
            }
        };
        let unfinished = tx.unfinished_tasks(&job.spec.id).await?;
        let plan = match plan(&job, now, unfinished) {
            Ok(plan) => plan,
            Err(reason) => {
                quarantine(tx, &mut pass, job.spec.id.to_string(), reason, now).await?;
                continue;
            }
        };
        let mut last_fired = None;
        for fire in &plan.fires {
            if !tx
                .guard_slot(&job.spec.id, fire.scheduled_at, fire.outcome, now)
                .await?
            {
                continue;
            }
            let mut outcome = fire.outcome;
            let mut task_id = None;
            if outcome == FireOutcome::Fired {
                match tx
                    .submit(job.fire_task(fire.scheduled_at, fire.run_at), now)
                    .await
                {
                    Ok(s) => {
                        task_id = Some(s.task.id);
                        last_fired = Some(fire.scheduled_at);
                    }
                    Err(StoreError::KeyConflict { .. }) => outcome = FireOutcome::KeyConflict,
                    Err(e) => return Err(e),
                }
                tx.record_slot(&job.spec.id, fire.scheduled_at, outcome, task_id)
                    .await?;
            }
            pass.fires.push(FireRecord {
                job_id: job.spec.id.clone(),
                scheduled_at: fire.scheduled_at,
                task_id,
                outcome,
                recorded_at: now,
            });
        }
        let state = if plan.finished {
            JobState::Finished
        } else {
            JobState::Active
        };
        tx.advance(&job.spec.id, plan.next_run_at, last_fired, state)
            .await?;
    }
    Ok(pass)
}

/// Plans a job's fires; an error is the reason to quarantine it instead.
fn plan(job: &Job, now: DateTime<Utc>, unfinished: i64) -> Result<FirePlan, String> {
    // Planning is pure arithmetic on times; a panic in it (an overflow on a corrupt value) must cost
    // this job, not the pass and every other due job with it.
    let plan = std::panic::catch_unwind(AssertUnwindSafe(|| plan_fires(job, now, unfinished)))
        .map_err(|_| "planning the job's fires panicked".to_owned())?;
    if plan.finished {
        // An invalid trigger also "never fires again": tell it apart from a finished one.
        check_plannable(job)?;
    }
    Ok(plan)
}

async fn quarantine(
    tx: &mut dyn FireSteps,
    pass: &mut FirePass,
    job_id: String,
    reason: String,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.quarantine(&job_id, &reason, now).await?;
    pass.quarantined.push(Quarantined { job_id, reason });
    Ok(())
}
