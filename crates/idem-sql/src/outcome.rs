//! What `finish` writes, once for every dialect: the row an attempt's outcome becomes, and why a
//! refused outcome was refused. The dialects only run the one fenced `UPDATE`.
//!
//! Invariant (exactly-once completion): the update applies only where the task is `running` with
//! this attempt number; anything else is refused — `Fenced` when the task exists (superseded,
//! reaped, cancelled or finished already), `TaskNotFound` when it does not.

use chrono::{DateTime, Utc};
use idem_core::store::Lease;
use idem_core::{ErrorInfo, Finish, StoreError, TaskState};
use serde_json::Value;

/// The columns an outcome sets.
pub(crate) struct Outcome<'a> {
    pub(crate) state: TaskState,
    pub(crate) result: Option<&'a Value>,
    pub(crate) error: Option<&'a ErrorInfo>,
    /// A retry's due time; `None` keeps the row's.
    pub(crate) run_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
}

impl<'a> Outcome<'a> {
    pub(crate) fn of(finish: &'a Finish, now: DateTime<Utc>) -> Self {
        match finish {
            Finish::Succeeded(v) => Outcome {
                state: TaskState::Succeeded,
                result: Some(v),
                error: None,
                run_at: None,
                finished_at: Some(now),
            },
            Finish::Retry { at, error } => Outcome {
                state: TaskState::Retrying,
                result: None,
                error: Some(error),
                run_at: Some(*at),
                finished_at: None,
            },
            Finish::Failed(error) => Outcome {
                state: TaskState::Failed,
                result: None,
                error: Some(error),
                run_at: None,
                finished_at: Some(now),
            },
        }
    }
}

/// The error of an outcome the fenced update did not apply.
pub(crate) fn refused(lease: Lease, task_exists: bool) -> StoreError {
    if task_exists {
        StoreError::Fenced {
            task_id: lease.task_id,
            attempt: lease.attempt,
        }
    } else {
        StoreError::TaskNotFound(lease.task_id)
    }
}
