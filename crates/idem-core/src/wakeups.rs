//! In-process wake-ups between the API, the scheduler and the workers, so that no loop busy-polls.
//!
//! Each signal is a `watch` counter: a subscriber sees every change made after it subscribed, even one
//! made while it was busy, so subscribing *before* querying the store means no wake-up is missed.

use tokio::sync::{broadcast, watch};

use crate::ids::TaskId;

pub struct Wakeups {
    jobs: watch::Sender<u64>,
    tasks: watch::Sender<u64>,
    finished: watch::Sender<u64>,
    cancels: broadcast::Sender<TaskId>,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self {
            jobs: watch::channel(0).0,
            tasks: watch::channel(0).0,
            finished: watch::channel(0).0,
            cancels: broadcast::channel(1024).0,
        }
    }
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

impl Wakeups {
    /// A job was created, changed, paused, resumed or deleted: schedulers recompute their sleep.
    pub fn jobs_changed(&self) {
        bump(&self.jobs);
    }
    /// A task became (or will become) runnable: workers look for work.
    pub fn tasks_ready(&self) {
        bump(&self.tasks);
    }
    /// A task reached a final state: result long-polls look again.
    pub fn task_finished(&self) {
        bump(&self.finished);
    }
    /// A running task was cancelled: its worker stops the handler.
    pub fn task_cancelled(&self, id: TaskId) {
        let _ = self.cancels.send(id);
    }

    pub fn subscribe_jobs(&self) -> watch::Receiver<u64> {
        self.jobs.subscribe()
    }
    pub fn subscribe_tasks(&self) -> watch::Receiver<u64> {
        self.tasks.subscribe()
    }
    pub fn subscribe_finished(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }
    pub fn subscribe_cancels(&self) -> broadcast::Receiver<TaskId> {
        self.cancels.subscribe()
    }
}
