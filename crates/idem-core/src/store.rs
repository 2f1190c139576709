//! The `Store` seam: the source of truth for jobs, tasks, results, fires and idempotency records.
//!
//! Invariant: each method is one transaction that keeps one invariant — `submit` (one task per live
//! key), `fire_due` (one task per fire), `claim` (one lease per attempt), `finish` (one completion per
//! task, fenced by the attempt number). No transaction handle crosses this trait.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::broker::Hint;
use crate::ids::{JobId, QueueName, TaskId, TaskName, WorkerId};
use crate::job::{FirePass, FireRecord, Job, JobState};
use crate::task::{Claim, Finish, NewTask, Submitted, Task, TaskState};
use crate::wakeups::Wakeups;
use crate::worker_info::WorkerInfo;

/// Errors a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A job with this id exists and the caller did not ask to replace it.
    #[error("job {0} already exists")]
    JobExists(JobId),
    /// Item `index` of a submission reuses a live idempotency key with a different request.
    #[error("idempotency key {key} was used with a different request")]
    KeyConflict { index: usize, key: String },
    /// The attempt is no longer the task's current attempt (superseded, reaped, cancelled or
    /// finished): its result is refused.
    #[error("attempt {attempt} of task {task_id} is no longer current")]
    Fenced { task_id: TaskId, attempt: i32 },
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// The store could not be reached or failed; retrying later may succeed.
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored data could not be decoded: a bug or a foreign write.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Runs a store call (or a few) for at most `limit`; past it the call is dropped — an open
/// transaction rolls back — and answers `Unavailable` with `what timed out`. For the loops that must
/// not wedge on a store that stopped answering.
pub async fn bounded<T>(
    limit: std::time::Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("{what} timed out").into())))
}

/// A page of results and the cursor of the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Opaque to callers: pass it back as `PageRequest::after`.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from `limit + 1` fetched items: the extra item only says that another page follows,
    /// whose cursor is the key of this page's last item.
    pub fn from_overfetch(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Self {
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(key)
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

/// Which page to read.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest {
    pub limit: u32,
    /// The id of the last item of the previous page.
    pub after: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub task: Option<TaskName>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub task: Option<TaskName>,
    pub job_id: Option<JobId>,
}

/// The outcome of a compare-and-set write: done, no such row, or the row changed since it was read.
#[derive(Debug, Clone, PartialEq)]
pub enum Cas<T> {
    Done(T),
    NotFound,
    /// The row's version is no longer the one the writer read: nothing was written.
    Stale,
}

/// A claim request from a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequest {
    pub worker: WorkerId,
    pub queues: Vec<QueueName>,
    pub limit: u32,
    pub now: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
}

/// A lease a worker holds: task and attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub task_id: TaskId,
    pub attempt: i32,
}

/// What the lease reaper did with one expired lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Reaped {
    pub task_id: TaskId,
    /// `Queued` (another attempt) or `Failed` (no retries left).
    pub state: TaskState,
}

/// Counts for the queue-depth gauge.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDepth {
    pub queue: QueueName,
    pub state: TaskState,
    pub count: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The in-process wake-ups this store fires after its commits (and, for stores shared between
    /// processes, when another process commits).
    fn wakeups(&self) -> Arc<Wakeups>;

    /// Answers when the store is reachable.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The store's clock, which the engines pass as `now`: a shared database answers with its own
    /// clock so that hosts with skewed clocks agree on due times and leases. Millisecond precision.
    async fn now(&self) -> Result<DateTime<Utc>, StoreError> {
        Ok(crate::time::trunc_ms(Utc::now()))
    }

    // --- jobs -------------------------------------------------------------------------------

    /// Inserts a job (or replaces it when `replace`); `job.next_run_at` is already computed.
    async fn create_job(&self, job: Job, replace: bool) -> Result<Job, StoreError>;
    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError>;
    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest,
    ) -> Result<Page<Job>, StoreError>;
    /// Overwrites a job's definition, state and `next_run_at` if its version is still `expected`
    /// (compare-and-set), and moves the version on; `Stale` when another write came between.
    async fn update_job(&self, job: Job, expected: i64) -> Result<Cas<Job>, StoreError>;
    /// Deletes a job and its history; with `expected`, only while its version is that one.
    async fn delete_job(&self, id: &JobId, expected: Option<i64>) -> Result<Cas<()>, StoreError>;
    /// The job's fire history, newest first.
    async fn job_runs(&self, id: &JobId, limit: u32) -> Result<Vec<FireRecord>, StoreError>;

    // --- scheduler --------------------------------------------------------------------------

    /// Fires up to `limit` due active jobs: for each, in one transaction, plans its fires
    /// ([`crate::job::plan_fires`]), inserts the fired tasks (key `job:{id}:{slot}`), records the
    /// history and advances `next_run_at`. Two schedulers calling this at once fire each slot once.
    /// A slot whose key is held by another request is recorded as `key_conflict`; a job that cannot
    /// be read or planned is quarantined; neither stops the other jobs of the call.
    async fn fire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<FirePass, StoreError>;
    /// The earliest `next_run_at` of the active jobs.
    async fn next_fire_at(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    // --- tasks ------------------------------------------------------------------------------

    /// Inserts a batch in one transaction, in order. An item whose key is live returns the existing
    /// task as a replay when its fingerprint matches; otherwise the whole batch fails with
    /// `KeyConflict`.
    async fn submit(
        &self,
        tasks: Vec<NewTask>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Submitted>, StoreError>;
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError>;
    async fn list_tasks(
        &self,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<Task>, StoreError>;
    /// Cancels a task that has not finished (queued, scheduled, retrying at once; running: the state
    /// becomes `cancelled` now, which fences the running attempt). A final task is returned unchanged.
    async fn cancel_task(&self, id: TaskId, now: DateTime<Utc>)
        -> Result<Option<Task>, StoreError>;

    /// Claims up to `limit` runnable tasks (queued, or scheduled/retrying whose time has come), highest
    /// priority first then oldest, and leases each to the worker with a new attempt number.
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Claim>, StoreError>;
    /// Claims one given task (a broker's hint) if it is still runnable.
    async fn claim_one(
        &self,
        id: TaskId,
        worker: &WorkerId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Claim>, StoreError>;
    /// Claims each of the given tasks (a batch of broker hints) that is still runnable, as
    /// [`Store::claim_one`] would one by one; an id given twice is claimed once. Stores override it
    /// to claim the batch in one statement.
    async fn claim_ids(
        &self,
        ids: &[TaskId],
        worker: &WorkerId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut out: Vec<Claim> = Vec::with_capacity(ids.len());
        for id in ids {
            if out.iter().any(|c| c.task.id == *id) {
                continue;
            }
            if let Some(c) = self.claim_one(*id, worker, now, lease_until).await? {
                out.push(c);
            }
        }
        Ok(out)
    }
    /// Extends the worker's leases; returns those it no longer holds (cancelled, reaped, finished).
    async fn renew_leases(
        &self,
        worker: &WorkerId,
        leases: &[Lease],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Lease>, StoreError>;
    /// Records how an attempt ended. Refused with `Fenced` unless the task is running this attempt.
    async fn finish(
        &self,
        lease: Lease,
        finish: Finish,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError>;
    /// Records several attempts' outcomes in one transaction (group commit: one disk flush for many
    /// completions). Each item is fenced on its own; the outer error means nothing was written.
    async fn finish_many(
        &self,
        items: Vec<(Lease, Finish)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        for (lease, finish) in items {
            out.push(match self.finish(lease, finish, now).await {
                Err(StoreError::Unavailable(e)) => return Err(StoreError::Unavailable(e)),
                r => r,
            });
        }
        Ok(out)
    }
    /// Hands a running attempt back to the queue without counting it (graceful shutdown).
    async fn release(&self, lease: Lease, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// The earliest time a scheduled or retrying task in these queues becomes runnable.
    async fn next_ready_at(
        &self,
        queues: &[QueueName],
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    // --- the outbox (broker mode) ----------------------------------------------------------

    /// Takes up to `limit` queued tasks that still need a broker message — never published, or
    /// last marked before `redeliver_before` and still not claimed — after making due scheduled and
    /// retrying tasks `queued`. The taken tasks are marked at `mark` in the same transaction, so
    /// concurrent dispatchers split the work. The caller chooses `mark` so that the task becomes
    /// eligible again soon (a publish lease): if the dispatcher dies before the broker confirms,
    /// another one takes the task over after that lease; `mark_dispatched` then records the publish.
    async fn take_for_dispatch(
        &self,
        _now: DateTime<Utc>,
        _limit: u32,
        _redeliver_before: DateTime<Utc>,
        _mark: DateTime<Utc>,
    ) -> Result<Vec<Hint>, StoreError> {
        Err(StoreError::Unavailable("this store has no outbox".into()))
    }
    /// The earliest time a scheduled or retrying task in any queue becomes runnable.
    async fn next_ready_at_any(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Err(StoreError::Unavailable("this store has no outbox".into()))
    }
    /// Sets the publish mark of queued tasks to `at`: they are taken for dispatch again once `at` is
    /// older than the redelivery window. After the broker's confirm, `at` is the confirm time; after a
    /// failed publish, a time that makes them eligible again after a short backoff.
    ///
    /// Compare-and-set on the provisional mark: only tasks still carrying `taken` (the `mark` their
    /// `take_for_dispatch` set) change. A task taken again since — a newer attempt re-queued, or
    /// another dispatcher after the publish lease — keeps its newer mark, so a late confirm cannot
    /// make a message that was never published look published.
    async fn mark_dispatched(
        &self,
        _ids: &[TaskId],
        _taken: DateTime<Utc>,
        _at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("this store has no outbox".into()))
    }

    // --- maintenance ------------------------------------------------------------------------

    /// Returns the tasks whose lease expired to the queue (or fails them when no retry is left).
    /// Each expired attempt is reaped exactly once.
    async fn reap_leases(&self, now: DateTime<Utc>) -> Result<Vec<Reaped>, StoreError>;
    /// Marks tasks that did not start by `expires_at` as `expired`.
    async fn expire_tasks(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Deletes idempotency records past their TTL and workers silent since `workers_before`.
    async fn prune(
        &self,
        now: DateTime<Utc>,
        workers_before: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    // --- workers and metrics ----------------------------------------------------------------

    async fn worker_heartbeat(&self, info: &WorkerInfo) -> Result<(), StoreError>;
    async fn remove_worker(&self, id: &WorkerId) -> Result<(), StoreError>;
    async fn list_workers(&self) -> Result<Vec<WorkerInfo>, StoreError>;
    /// Task counts by queue and unfinished state.
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError>;
}
