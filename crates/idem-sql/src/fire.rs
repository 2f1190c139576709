//! `fire_due` for every dialect: the one loop that turns due jobs into fires, over a small
//! crate-private trait of per-dialect statements ([`FireSteps`]), so that a fix to the loop lands
//! once for SQLite and PostgreSQL. Each step takes the whole batch of due jobs at once (one
//! statement per step on PostgreSQL), so a pass costs a handful of round trips per batch rather
//! than several per fired slot: at 10,000 one-second jobs the per-slot statements were the limit.
//!
//! Invariants, all inside the caller's one transaction:
//! - a slot is fired at most once: its history row (primary key `job_id, scheduled_at`) is inserted
//!   first and is the guard — a slot already recorded is skipped, and its task is not submitted;
//! - every slot the loop looks at ends with a history row: `fired` (with its task), `missed`,
//!   `skipped_overlap`, or `key_conflict` when the slot's key is held by another request — a conflict
//!   is an outcome of that slot, never an error of the pass;
//! - a job that cannot be decoded or planned is quarantined (state `quarantined`, with the reason),
//!   and the loop goes on with the other jobs;
//! - `next_run_at` moves past every slot planned, and the job's version moves on with each write.

use std::collections::HashMap;
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

/// One slot's history row: its outcome and, when fired, its task.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub job: JobId,
    pub at: DateTime<Utc>,
    pub outcome: FireOutcome,
    pub task: Option<TaskId>,
}

/// How a job moves on after its slots are decided.
#[derive(Debug, Clone)]
pub(crate) struct Advance {
    pub job: JobId,
    pub next_run_at: Option<DateTime<Utc>>,
    /// The latest slot whose task was made (or replayed), if any.
    pub last_fired: Option<DateTime<Utc>>,
    pub state: JobState,
}

/// What submitting one fire's task came to.
#[allow(clippy::large_enum_variant)] // short-lived, one per fired slot
pub(crate) enum FireSubmit {
    /// The task was made, or an earlier fire of the slot made it (a replay).
    Submitted(Submitted),
    /// The slot's key is held by a task with another request.
    KeyConflict,
}

/// The statements one dialect runs for [`fire_due`], inside its open transaction. Every batch
/// method answers item by item, in its input's order.
#[async_trait]
pub(crate) trait FireSteps: Send {
    /// Active jobs with `next_run_at <= now`, earliest first, at most `limit`; PostgreSQL locks them
    /// and skips rows another scheduler holds (that scheduler is firing them).
    async fn due_jobs(&mut self, now: DateTime<Utc>, limit: u32)
        -> Result<Vec<DueJob>, StoreError>;
    /// How many of each job's tasks are not final (for `max_instances`); a job with none may be
    /// absent from the answer.
    async fn unfinished_tasks(&mut self, jobs: &[JobId])
        -> Result<HashMap<JobId, i64>, StoreError>;
    /// Inserts each slot's history row unless it exists; per slot, `true` when this call inserted
    /// it. `now` is the pass's time: a row is recorded no earlier.
    async fn guard_slots(
        &mut self,
        slots: &[Slot],
        now: DateTime<Utc>,
    ) -> Result<Vec<bool>, StoreError>;
    /// Submits the fires' tasks (all keyed with their slot's `job:` key); per task, what came of it.
    async fn submit_fires(
        &mut self,
        tasks: Vec<NewTask>,
        now: DateTime<Utc>,
    ) -> Result<Vec<FireSubmit>, StoreError>;
    /// Sets the slots' outcome and task on their history rows (the rows whose fire did not go as
    /// the guard recorded it: a replay or a key conflict).
    async fn record_slots(&mut self, slots: &[Slot]) -> Result<(), StoreError>;
    /// Moves the jobs on: next fire, last fired slot (if any) and state; bumps each version.
    async fn advance(&mut self, jobs: &[Advance]) -> Result<(), StoreError>;
    /// Sets the job aside (state `quarantined`, with the reason); bumps the version.
    async fn quarantine(
        &mut self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// A job's planned fires, before the guard.
struct Planned {
    job: Job,
    plan: FirePlan,
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
    let mut jobs = Vec::with_capacity(due.len());
    for row in due {
        match row {
            DueJob::Decoded(job) => jobs.push(job),
            DueJob::Undecodable { id, reason } => {
                quarantine(tx, &mut pass, id, reason, now).await?
            }
        }
    }
    if jobs.is_empty() {
        return Ok(pass);
    }
    let ids: Vec<JobId> = jobs.iter().map(|j| j.spec.id.clone()).collect();
    let unfinished = tx.unfinished_tasks(&ids).await?;
    let mut planned = Vec::with_capacity(jobs.len());
    for job in jobs {
        let running = unfinished.get(&job.spec.id).copied().unwrap_or(0);
        match plan(&job, now, running) {
            Ok(plan) => planned.push(Planned { job, plan }),
            Err(reason) => quarantine(tx, &mut pass, job.spec.id.to_string(), reason, now).await?,
        }
    }

    // Every planned slot with its outcome; a fired slot carries the task it is to make, so the
    // guard row already names it and only a replay or a conflict needs a second write.
    let mut slots = Vec::new();
    let mut tasks = Vec::new();
    for p in &planned {
        for fire in &p.plan.fires {
            let task = (fire.outcome == FireOutcome::Fired)
                .then(|| p.job.fire_task(fire.scheduled_at, fire.run_at));
            slots.push(Slot {
                job: p.job.spec.id.clone(),
                at: fire.scheduled_at,
                outcome: fire.outcome,
                task: task.as_ref().map(|t| t.id),
            });
            tasks.push(task);
        }
    }
    let inserted = tx.guard_slots(&slots, now).await?;
    if inserted.len() != slots.len() {
        return Err(StoreError::Corrupt(format!(
            "the slot guard answered {} of {} slots",
            inserted.len(),
            slots.len()
        )));
    }

    // Submit the tasks of the slots this pass guarded; a slot recorded before is left alone.
    let mut to_submit = Vec::new();
    let mut submitted_slot = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        if inserted[i] {
            if let Some(task) = task {
                to_submit.push(task);
                submitted_slot.push(i);
            }
        }
    }
    let outcomes = if to_submit.is_empty() {
        Vec::new()
    } else {
        let n = to_submit.len();
        let out = tx.submit_fires(to_submit, now).await?;
        if out.len() != n {
            return Err(StoreError::Corrupt(format!(
                "fire submission answered {} of {n} tasks",
                out.len()
            )));
        }
        out
    };
    let mut corrections = Vec::new();
    for (i, result) in submitted_slot.into_iter().zip(outcomes) {
        let slot = &mut slots[i];
        match result {
            FireSubmit::Submitted(s) => {
                if slot.task != Some(s.task.id) {
                    slot.task = Some(s.task.id);
                    corrections.push(slot.clone());
                }
            }
            FireSubmit::KeyConflict => {
                slot.outcome = FireOutcome::KeyConflict;
                slot.task = None;
                corrections.push(slot.clone());
            }
        }
    }
    if !corrections.is_empty() {
        tx.record_slots(&corrections).await?;
    }

    // The pass's records and each job's advance, in the order the jobs were planned.
    let mut last_fired: HashMap<&JobId, DateTime<Utc>> = HashMap::new();
    for (slot, fresh) in slots.iter().zip(&inserted) {
        if !fresh {
            continue;
        }
        if slot.outcome == FireOutcome::Fired {
            let e = last_fired.entry(&slot.job).or_insert(slot.at);
            *e = (*e).max(slot.at);
        }
        pass.fires.push(FireRecord {
            job_id: slot.job.clone(),
            scheduled_at: slot.at,
            task_id: slot.task,
            outcome: slot.outcome,
            recorded_at: now,
        });
    }
    let advances: Vec<Advance> = planned
        .iter()
        .map(|p| Advance {
            job: p.job.spec.id.clone(),
            next_run_at: p.plan.next_run_at,
            last_fired: last_fired.get(&p.job.spec.id).copied(),
            state: if p.plan.finished {
                JobState::Finished
            } else {
                JobState::Active
            },
        })
        .collect();
    if !advances.is_empty() {
        tx.advance(&advances).await?;
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
