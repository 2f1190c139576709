//! The wake-up rules, once for every dialect: which loops a committed store method wakes. SQLite fires
//! the returned signals in this process after its commit; PostgreSQL also announces them to the
//! other processes with `pg_notify` right after the commit (`postgres::announce`).
//!
//! Invariant: a commit that makes a task runnable wakes the workers (`Tasks`), one that makes a task
//! final wakes result long-polls (`Finished`), one that cancels a running task wakes its worker
//! (`Cancelled`), and one that changes a job wakes the schedulers (`Jobs`) — nothing else wakes
//! anybody.

use idem_core::job::FirePass;
use idem_core::store::Reaped;
use idem_core::{Submitted, Task, TaskId, Wakeups};

/// One kind of wake-up, as a store method announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// A job was created, changed or deleted.
    Jobs,
    /// A task became (or will become) runnable.
    Tasks,
    /// A task reached a final state.
    Finished,
    /// A running task was cancelled.
    Cancelled(TaskId),
}

impl Signal {
    /// Fires the in-process wake-up.
    pub(crate) fn fire(self, wakeups: &Wakeups) {
        match self {
            Signal::Jobs => wakeups.jobs_changed(),
            Signal::Tasks => wakeups.tasks_ready(),
            Signal::Finished => wakeups.task_finished(),
            Signal::Cancelled(id) => wakeups.task_cancelled(id),
        }
    }
}

/// A job was created, changed or deleted.
pub(crate) fn after_job_write() -> Vec<Signal> {
    vec![Signal::Jobs]
}

/// New tasks (not replays) are runnable or will be.
pub(crate) fn after_submit<'a>(out: impl IntoIterator<Item = &'a Submitted>) -> Vec<Signal> {
    flag(out.into_iter().any(|s| !s.replayed), Signal::Tasks)
}

/// Fired slots made tasks.
pub(crate) fn after_fire(pass: &FirePass) -> Vec<Signal> {
    flag(
        pass.fires.iter().any(|f| f.task_id.is_some()),
        Signal::Tasks,
    )
}

/// A cancel: the running attempt's worker must stop it; a final task ends long-polls.
pub(crate) fn after_cancel(out: &Option<(Task, Option<i32>)>) -> Vec<Signal> {
    let mut s = Vec::new();
    if let Some((task, was_running)) = out {
        if was_running.is_some() {
            s.push(Signal::Cancelled(task.id));
        }
        if task.state.is_final() {
            s.push(Signal::Finished);
        }
    }
    s
}

/// Recorded outcomes: final ones end long-polls, retries will be runnable.
pub(crate) fn after_finish<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> Vec<Signal> {
    let (mut finished, mut ready) = (false, false);
    for t in tasks {
        finished |= t.state.is_final();
        ready |= !t.state.is_final();
    }
    let mut s = flag(finished, Signal::Finished);
    s.extend(flag(ready, Signal::Tasks));
    s
}

/// A task handed back is runnable again.
pub(crate) fn after_release() -> Vec<Signal> {
    vec![Signal::Tasks]
}

/// Reaped leases: another attempt is runnable, or the task failed for good.
pub(crate) fn after_reap(out: &[Reaped]) -> Vec<Signal> {
    if out.is_empty() {
        Vec::new()
    } else {
        vec![Signal::Tasks, Signal::Finished]
    }
}

/// Expired tasks are final.
pub(crate) fn after_expire(n: u64) -> Vec<Signal> {
    flag(n > 0, Signal::Finished)
}

fn flag(on: bool, s: Signal) -> Vec<Signal> {
    if on {
        vec![s]
    } else {
        Vec::new()
    }
}
