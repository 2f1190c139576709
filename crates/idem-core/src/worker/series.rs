//! The worker's metric handles, made once when it starts: one set per registered task and one per
//! configured queue, so an attempt records its outcome without building a label string or looking
//! the series up in the recorder (thousands of attempts a second go through here).
//!
//! Invariant: made after the process installed its recorder (the worker's `run`, or the first
//! attempt), and every series made here is exported from then on, at 0 until it counts.

use std::collections::HashMap;

use metrics::{Counter, Gauge, Histogram};

use crate::handler::Registry;
use crate::ids::{QueueName, TaskName};
use crate::metrics as m;

/// One task name's series.
#[derive(Clone)]
pub(super) struct TaskSeries {
    pub(super) succeeded: Counter,
    pub(super) failed: Counter,
    pub(super) retries: Counter,
    pub(super) duration: Histogram,
}

impl TaskSeries {
    fn new(task: &str) -> Self {
        let [succeeded, failed] = m::FINAL_STATES.map(
            |state| metrics::counter!(m::TASKS_TOTAL, "task" => task.to_owned(), "state" => state),
        );
        Self {
            succeeded,
            failed,
            retries: metrics::counter!(m::TASK_RETRIES_TOTAL, "task" => task.to_owned()),
            duration: metrics::histogram!(m::TASK_DURATION_SECONDS, "task" => task.to_owned()),
        }
    }
}

/// Every series one worker records.
pub(super) struct Series {
    tasks: HashMap<TaskName, TaskSeries>,
    queue_wait: HashMap<QueueName, Histogram>,
    pub(super) busy: Gauge,
    pub(super) slots: Gauge,
    pub(super) stopped_unrenewed: Counter,
    pub(super) fenced: Counter,
    pub(super) dropped: Counter,
    pub(super) claim_batch: Histogram,
}

impl Series {
    pub(super) fn new(registry: &Registry, queues: &[QueueName]) -> Self {
        let tasks = registry
            .names()
            .filter_map(|n| TaskName::try_from(n).ok())
            .map(|n| {
                let series = TaskSeries::new(n.as_str());
                (n, series)
            })
            .collect();
        let queue_wait = queues
            .iter()
            .map(|q| {
                let h = metrics::histogram!(m::TASK_QUEUE_WAIT_SECONDS, "queue" => q.to_string());
                (q.clone(), h)
            })
            .collect();
        // Completions are written by the group committer; registered here, with the worker's.
        let _ = metrics::histogram!(m::COMPLETION_GROUP_SIZE);
        Self {
            tasks,
            queue_wait,
            busy: metrics::gauge!(m::WORKERS_BUSY),
            slots: metrics::gauge!(m::WORKER_SLOTS),
            stopped_unrenewed: metrics::counter!(m::ATTEMPTS_STOPPED_UNRENEWED_TOTAL),
            fenced: metrics::counter!(m::FINISH_FENCED_TOTAL),
            dropped: metrics::counter!(m::DELIVERIES_DROPPED_TOTAL),
            claim_batch: metrics::histogram!(m::CLAIM_BATCH_SIZE),
        }
    }

    /// The series of `task`; a name the registry does not hold (its attempt fails as
    /// `unknown_task`) gets its series made on the spot.
    pub(super) fn task(&self, task: &TaskName) -> std::borrow::Cow<'_, TaskSeries> {
        match self.tasks.get(task) {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(TaskSeries::new(task.as_str())),
        }
    }

    /// `idem_task_queue_wait_seconds` of `queue` (made on the spot for a queue not configured).
    pub(super) fn queue_wait(&self, queue: &QueueName) -> std::borrow::Cow<'_, Histogram> {
        match self.queue_wait.get(queue) {
            Some(h) => std::borrow::Cow::Borrowed(h),
            None => std::borrow::Cow::Owned(
                metrics::histogram!(m::TASK_QUEUE_WAIT_SECONDS, "queue" => queue.to_string()),
            ),
        }
    }
}
