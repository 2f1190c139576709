//! A `Store` that forwards to a real one until a test cuts it off: the in-process stand-in for a
//! network partition between one role and its store, for tests of what a role does then.
//!
//! Invariant: while a fault is set, no call reaches the inner store — a black hole hangs every call
//! (packets dropped, no answer ever), a failure answers `Unavailable` at once (connection refused).
//! `wakeups` is local to the process and is never cut.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use idem_core::broker::Hint;
use idem_core::job::FirePass;
use idem_core::store::{
    Cas, ClaimRequest, JobFilter, Lease, Page, PageRequest, QueueDepth, Reaped, TaskFilter,
};
use idem_core::{
    Claim, Finish, FireRecord, Job, JobId, NewTask, QueueName, Store, StoreError, Submitted, Task,
    TaskId, Wakeups, WorkerId, WorkerInfo,
};

/// What the link to the inner store does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Up = 0,
    /// Every call hangs.
    BlackHole = 1,
    /// Every call fails at once.
    Refused = 2,
}

/// The store behind a switchable link.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    link: AtomicU8,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            link: AtomicU8::new(Link::Up as u8),
        })
    }

    pub fn set(&self, link: Link) {
        self.link.store(link as u8, Ordering::SeqCst);
    }

    async fn gate(&self) -> Result<(), StoreError> {
        match self.link.load(Ordering::SeqCst) {
            1 => futures::future::pending().await,
            2 => Err(StoreError::Unavailable("connection refused (test)".into())),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn wakeups(&self) -> Arc<Wakeups> {
        self.inner.wakeups()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.ping().await
    }
    async fn now(&self) -> Result<DateTime<Utc>, StoreError> {
        self.gate().await?;
        self.inner.now().await
    }
    async fn create_job(&self, job: Job, replace: bool) -> Result<Job, StoreError> {
        self.gate().await?;
        self.inner.create_job(job, replace).await
    }
    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.gate().await?;
        self.inner.get_job(id).await
    }
    async fn list_jobs(&self, f: &JobFilter, p: &PageRequest) -> Result<Page<Job>, StoreError> {
        self.gate().await?;
        self.inner.list_jobs(f, p).await
    }
    async fn update_job(&self, job: Job, expected: i64) -> Result<Cas<Job>, StoreError> {
        self.gate().await?;
        self.inner.update_job(job, expected).await
    }
    async fn delete_job(&self, id: &JobId, expected: Option<i64>) -> Result<Cas<()>, StoreError> {
        self.gate().await?;
        self.inner.delete_job(id, expected).await
    }
    async fn job_runs(&self, id: &JobId, limit: u32) -> Result<Vec<FireRecord>, StoreError> {
        self.gate().await?;
        self.inner.job_runs(id, limit).await
    }
    async fn fire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<FirePass, StoreError> {
        self.gate().await?;
        self.inner.fire_due(now, limit).await
    }
    async fn next_fire_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.gate().await?;
        self.inner.next_fire_at().await
    }
    async fn submit(
        &self,
        tasks: Vec<NewTask>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Submitted>, StoreError> {
        self.gate().await?;
        self.inner.submit(tasks, now).await
    }
    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        self.gate().await?;
        self.inner.get_task(id).await
    }
    async fn list_tasks(&self, f: &TaskFilter, p: &PageRequest) -> Result<Page<Task>, StoreError> {
        self.gate().await?;
        self.inner.list_tasks(f, p).await
    }
    async fn cancel_task(
        &self,
        id: TaskId,
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, StoreError> {
        self.gate().await?;
        self.inner.cancel_task(id, now).await
    }
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Claim>, StoreError> {
        self.gate().await?;
        self.inner.claim(req).await
    }
    async fn claim_one(
        &self,
        id: TaskId,
        worker: &WorkerId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Claim>, StoreError> {
        self.gate().await?;
        self.inner.claim_one(id, worker, now, lease_until).await
    }
    async fn renew_leases(
        &self,
        worker: &WorkerId,
        leases: &[Lease],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Lease>, StoreError> {
        self.gate().await?;
        self.inner.renew_leases(worker, leases, lease_until).await
    }
    async fn finish(
        &self,
        lease: Lease,
        finish: Finish,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError> {
        self.gate().await?;
        self.inner.finish(lease, finish, now).await
    }
    async fn finish_many(
        &self,
        items: Vec<(Lease, Finish)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        self.gate().await?;
        self.inner.finish_many(items, now).await
    }
    async fn release(&self, lease: Lease, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.release(lease, now).await
    }
    async fn next_ready_at(
        &self,
        queues: &[QueueName],
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.gate().await?;
        self.inner.next_ready_at(queues).await
    }
    async fn take_for_dispatch(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        redeliver_before: DateTime<Utc>,
        mark: DateTime<Utc>,
    ) -> Result<Vec<Hint>, StoreError> {
        self.gate().await?;
        self.inner
            .take_for_dispatch(now, limit, redeliver_before, mark)
            .await
    }
    async fn next_ready_at_any(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.gate().await?;
        self.inner.next_ready_at_any().await
    }
    async fn mark_dispatched(
        &self,
        ids: &[TaskId],
        taken: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.mark_dispatched(ids, taken, at).await
    }
    async fn reap_leases(&self, now: DateTime<Utc>) -> Result<Vec<Reaped>, StoreError> {
        self.gate().await?;
        self.inner.reap_leases(now).await
    }
    async fn expire_tasks(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.gate().await?;
        self.inner.expire_tasks(now).await
    }
    async fn prune(
        &self,
        now: DateTime<Utc>,
        workers_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.gate().await?;
        self.inner.prune(now, workers_before).await
    }
    async fn worker_heartbeat(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.worker_heartbeat(info).await
    }
    async fn remove_worker(&self, id: &WorkerId) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.remove_worker(id).await
    }
    async fn list_workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        self.gate().await?;
        self.inner.list_workers().await
    }
    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        self.gate().await?;
        self.inner.queue_depths().await
    }
}
