//! Jobs: a task fired on a trigger, and the pure planning of what a due job's fires become
//! (`fired`, `missed`, `skipped_overlap`; `key_conflict` is decided by the store).
//!
//! Invariant: a fire is identified by `(job_id, scheduled_at)`; [`plan_fires`] never plans one slot
//! twice and always moves `next_run_at` past every slot it planned, so a store that applies the plan in
//! one transaction fires each slot once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{IdempotencyKey, JobId, QueueName, TaskId, TaskName};
use crate::task::{Idempotency, NewTask};
use crate::time::chrono_secs;
use crate::trigger::{jitter_for, Trigger};

/// A job's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Active,
    Paused,
    /// The trigger will never fire again (a date job that fired, or past `end_at`).
    Finished,
    /// The scheduler could not read or plan the job (a stored trigger this version refuses, a row
    /// written by something else): it is set aside so that the other jobs keep firing, with the
    /// reason in `quarantine_reason`. A `PATCH` with a valid trigger, or `resume`, makes it active.
    Quarantined,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Active => "active",
            JobState::Paused => "paused",
            JobState::Finished => "finished",
            JobState::Quarantined => "quarantined",
        }
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(JobState::Active),
            "paused" => Ok(JobState::Paused),
            "finished" => Ok(JobState::Finished),
            "quarantined" => Ok(JobState::Quarantined),
            _ => Err(format!("unknown job state {s:?}")),
        }
    }
}

/// What a job does and how it fires: everything the user sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSpec {
    #[schema(value_type = String)]
    pub id: JobId,
    pub name: Option<String>,
    #[schema(value_type = String)]
    pub task: TaskName,
    pub args: Value,
    pub trigger: Trigger,
    pub misfire_grace_seconds: f64,
    pub coalesce: bool,
    pub max_instances: i32,
    pub jitter_seconds: f64,
    #[schema(value_type = String)]
    pub queue: QueueName,
    pub priority: i16,
    pub max_retries: i32,
    pub timeout_seconds: f64,
    pub idempotency_ttl_seconds: f64,
}

/// A job as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    #[serde(flatten)]
    pub spec: JobSpec,
    pub state: JobState,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Grows by one with every write of the job — API changes and each fire alike — so a writer
    /// that read version `v` can write only if nobody wrote since (compare-and-set). It is the
    /// job's `ETag`.
    #[serde(default)]
    pub version: i64,
    /// Why the scheduler set the job aside (state `quarantined`); `null` otherwise.
    #[serde(default)]
    pub quarantine_reason: Option<String>,
}

impl Job {
    /// The task of one fire: the job's task and options, keyed `job:{id}:{slot}`. The key is also the
    /// fingerprint, so any scheduler that fires the same slot makes (or finds) the same task.
    pub fn fire_task(&self, slot: DateTime<Utc>, run_at: DateTime<Utc>) -> NewTask {
        let s = &self.spec;
        let key = IdempotencyKey::for_fire(&s.id, slot);
        NewTask {
            id: TaskId::generate(),
            task: s.task.clone(),
            args: s.args.clone(),
            queue: s.queue.clone(),
            priority: s.priority,
            max_retries: s.max_retries,
            timeout_seconds: s.timeout_seconds,
            run_at,
            expires_at: None,
            job_id: Some(s.id.clone()),
            idempotency: Some(Idempotency {
                fingerprint: key.to_string(),
                key,
                ttl_seconds: s.idempotency_ttl_seconds,
            }),
            traceparent: crate::trace::current_traceparent(),
        }
    }
}

/// What became of one fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FireOutcome {
    /// A task was created for it.
    Fired,
    /// Later than `misfire_grace_seconds`: skipped.
    Missed,
    /// `max_instances` of the job's tasks were unfinished: skipped.
    SkippedOverlap,
    /// The slot's key (`job:{id}:{slot}`) was already held by a task with another request — one
    /// submitted by a client before the `job:` namespace was reserved: no task was made.
    KeyConflict,
}

impl FireOutcome {
    /// Every outcome.
    pub const ALL: [FireOutcome; 4] = [
        FireOutcome::Fired,
        FireOutcome::Missed,
        FireOutcome::SkippedOverlap,
        FireOutcome::KeyConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FireOutcome::Fired => "fired",
            FireOutcome::Missed => "missed",
            FireOutcome::SkippedOverlap => "skipped_overlap",
            FireOutcome::KeyConflict => "key_conflict",
        }
    }
}

impl std::str::FromStr for FireOutcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fired" => Ok(FireOutcome::Fired),
            "missed" => Ok(FireOutcome::Missed),
            "skipped_overlap" => Ok(FireOutcome::SkippedOverlap),
            "key_conflict" => Ok(FireOutcome::KeyConflict),
            _ => Err(format!("unknown fire outcome {s:?}")),
        }
    }
}

/// One entry of a job's run history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FireRecord {
    #[schema(value_type = String)]
    pub job_id: JobId,
    pub scheduled_at: DateTime<Utc>,
    #[schema(value_type = Option<String>)]
    pub task_id: Option<TaskId>,
    pub outcome: FireOutcome,
    /// When the scheduler decided (its lateness is `recorded_at - scheduled_at`).
    pub recorded_at: DateTime<Utc>,
}

/// A job the scheduler set aside instead of firing (state `quarantined`).
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    /// The row's id as stored (it may not even be a valid [`JobId`]).
    pub job_id: String,
    pub reason: String,
}

/// What one `fire_due` call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FirePass {
    /// Every slot recorded, each with its outcome.
    pub fires: Vec<FireRecord>,
    /// Jobs that could not be read or planned; the others fired all the same.
    pub quarantined: Vec<Quarantined>,
    /// How many due jobs the call took (fired, skipped or quarantined): a caller repeats while this
    /// reaches its limit.
    pub jobs: usize,
}

/// Whether a stored job can be planned at all: its trigger is one this version accepts. Asked only
/// when a plan says the job finished — an invalid trigger also "never fires again", and must be
/// quarantined instead of silently finished.
pub fn check_plannable(job: &Job) -> Result<(), String> {
    job.spec
        .trigger
        .clone()
        .normalize(job.created_at)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One planned fire.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedFire {
    pub scheduled_at: DateTime<Utc>,
    pub outcome: FireOutcome,
    /// When the fire's task may start (`scheduled_at` plus the job's jitter); meaningful for `Fired`.
    pub run_at: DateTime<Utc>,
}

/// What to do with a due job.
#[derive(Debug, Clone, PartialEq)]
pub struct FirePlan {
    pub fires: Vec<PlannedFire>,
    pub next_run_at: Option<DateTime<Utc>>,
    /// The trigger will never fire again: the job becomes `finished`.
    pub finished: bool,
}

/// At most this many overdue slots are looked at in one pass; past it, the rest are skipped silently
/// and the job resumes from the next slot after now (a 1 s job after a day's outage is not 86,400 fires).
pub const MAX_CATCH_UP: usize = 1000;

/// Plans a due job's fires at `now`. `unfinished` counts the job's tasks that have not reached a final
/// state (for `max_instances`).
///
/// APScheduler's semantics: every slot up to now is due; with `coalesce` only the latest is run; a
/// slot later than the grace is `missed`; a slot while `max_instances` tasks are unfinished is
/// `skipped_overlap`.
pub fn plan_fires(job: &Job, now: DateTime<Utc>, unfinished: i64) -> FirePlan {
    let spec = &job.spec;
    let mut due = Vec::new();
    let mut next = job.next_run_at;
    while let Some(slot) = next.filter(|s| *s <= now) {
        if due.len() == MAX_CATCH_UP {
            next = spec.trigger.next_after(now);
            break;
        }
        due.push(slot);
        next = spec.trigger.next_after(slot);
    }
    if spec.coalesce && due.len() > 1 {
        due.drain(..due.len() - 1);
    }
    let grace = chrono_secs(spec.misfire_grace_seconds);
    let mut running = unfinished;
    let fires = due
        .into_iter()
        .map(|slot| {
            let outcome = if now - slot > grace {
                FireOutcome::Missed
            } else if running >= i64::from(spec.max_instances) {
                FireOutcome::SkippedOverlap
            } else {
                running += 1;
                FireOutcome::Fired
            };
            PlannedFire {
                scheduled_at: slot,
                outcome,
                run_at: slot + jitter_for(spec.id.as_str(), slot, spec.jitter_seconds),
            }
        })
        .collect();
    FirePlan {
        fires,
        next_run_at: next,
        finished: next.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn job(every: f64, coalesce: bool, grace: f64, max_instances: i32) -> Job {
        Job {
            spec: JobSpec {
                id: JobId::try_from("j").unwrap(),
                name: None,
                task: TaskName::try_from("noop").unwrap(),
                args: json!(null),
                trigger: Trigger::Interval {
                    every_seconds: every,
                    start_at: Some(t(0)),
                    end_at: None,
                },
                misfire_grace_seconds: grace,
                coalesce,
                max_instances,
                jitter_seconds: 0.0,
                queue: QueueName::default_queue(),
                priority: 0,
                max_retries: 0,
                timeout_seconds: 10.0,
                idempotency_ttl_seconds: 60.0,
            },
            state: JobState::Active,
            next_run_at: Some(t(0)),
            last_run_at: None,
            created_at: t(0),
            updated_at: t(0),
            version: 1,
            quarantine_reason: None,
        }
    }

    fn outcomes(plan: &FirePlan) -> Vec<(i64, FireOutcome)> {
        plan.fires
            .iter()
            .map(|f| (f.scheduled_at.timestamp() - 1_800_000_000, f.outcome))
            .collect()
    }

    #[test]
    fn a_job_not_yet_due_plans_nothing() {
        let plan = plan_fires(&job(10.0, true, 60.0, 1), t(-1), 0);
        assert!(plan.fires.is_empty());
        assert_eq!(plan.next_run_at, Some(t(0)));
    }

    #[test]
    fn an_on_time_fire_is_fired_and_the_next_slot_follows() {
        let plan = plan_fires(&job(10.0, true, 60.0, 1), t(0), 0);
        assert_eq!(outcomes(&plan), vec![(0, FireOutcome::Fired)]);
        assert_eq!(plan.next_run_at, Some(t(10)));
        assert!(!plan.finished);
    }

    #[test]
    fn coalesce_runs_only_the_latest_overdue_slot() {
        let plan = plan_fires(&job(10.0, true, 60.0, 5), t(35), 0);
        assert_eq!(outcomes(&plan), vec![(30, FireOutcome::Fired)]);
        assert_eq!(plan.next_run_at, Some(t(40)));
    }

    #[test]
    fn without_coalesce_each_overdue_slot_is_fired_or_missed_by_the_grace() {
        let plan = plan_fires(&job(10.0, false, 15.0, 10), t(35), 0);
        assert_eq!(
            outcomes(&plan),
            vec![
                (0, FireOutcome::Missed),
                (10, FireOutcome::Missed),
                (20, FireOutcome::Fired),
                (30, FireOutcome::Fired)
            ]
        );
    }

    #[test]
    fn max_instances_skips_fires_while_tasks_are_unfinished() {
        let plan = plan_fires(&job(10.0, true, 60.0, 1), t(0), 1);
        assert_eq!(outcomes(&plan), vec![(0, FireOutcome::SkippedOverlap)]);
        let plan = plan_fires(&job(10.0, false, 60.0, 2), t(20), 1);
        assert_eq!(
            outcomes(&plan),
            vec![
                (0, FireOutcome::Fired),
                (10, FireOutcome::SkippedOverlap),
                (20, FireOutcome::SkippedOverlap)
            ]
        );
    }

    #[test]
    fn a_long_outage_is_capped_and_resumes_after_now() {
        let plan = plan_fires(&job(1.0, false, 1e9, 1_000_000), t(86_400), 0);
        assert_eq!(plan.fires.len(), MAX_CATCH_UP);
        assert_eq!(plan.next_run_at, Some(t(86_401)));
    }

    #[test]
    fn a_date_job_finishes_after_its_fire() {
        let mut j = job(1.0, true, 60.0, 1);
        j.spec.trigger = Trigger::Date {
            run_at: t(5),
            start_at: None,
            end_at: None,
        };
        j.next_run_at = Some(t(5));
        let plan = plan_fires(&j, t(6), 0);
        assert_eq!(outcomes(&plan), vec![(5, FireOutcome::Fired)]);
        assert!(plan.finished);
        assert_eq!(plan.next_run_at, None);
    }
}
