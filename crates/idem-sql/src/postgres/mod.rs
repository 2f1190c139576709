//! The PostgreSQL store: the source of truth shared by any number of API, scheduler and worker
//! processes.
//!
//! Invariants: every `Store` method is one READ COMMITTED transaction; the rows a method competes
//! for are taken with `FOR UPDATE SKIP LOCKED` (claims, fires, promotion, reaping, expiry) or
//! decided by a unique key (`ON CONFLICT`: idempotency keys, fire history), so concurrent processes
//! neither block on each other's work nor do it twice. Each commit that can wake another loop fires
//! this process's wake-ups once it has committed and is announced to the other processes with
//! `pg_notify` right after (`announce`: not inside the transaction, where it would serialise
//! commits).

mod announce;
mod clock;
mod connect;
mod jobs;
mod locks;
mod notify;
mod outbox;
mod rows;
mod submit;
mod tasks;
mod workers;

pub use connect::{InvalidSchema, PgOptions};

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
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::DropGuard;

use self::clock::DbClock;
use self::notify::Signal;
use crate::{db_err, wake};

/// The store over one PostgreSQL database (and schema). Cheap to clone; the clones share the pool,
/// the wake-ups and the listener, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct PgStore {
    /// Every method's transaction; already shareable, so clones share it.
    pool: PgPool,
    /// For migrations, which run on a connection of their own (see [`PgStore::migrate`]).
    connect: PgConnectOptions,
    /// This process's wake-ups, fired after each commit and by the listener for other processes'.
    wakeups: Arc<Wakeups>,
    /// `now()` without a query per call.
    clock: Arc<DbClock>,
    /// Cancels the notification listener when the last clone is dropped.
    _listener: Arc<DropGuard>,
    /// Sends commits' signals to the other processes (see [`announce`]).
    announcer: Arc<announce::Announcer>,
}

impl PgStore {
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(db_err)
    }

    /// Commits, then fires `signals` in this process and hands them to the announcer for the
    /// others.
    async fn commit(
        &self,
        tx: Transaction<'static, Postgres>,
        signals: &[Signal],
    ) -> Result<(), StoreError> {
        tx.commit().await.map_err(db_err)?;
        for s in signals {
            s.fire(&self.wakeups);
        }
        if !signals.is_empty() {
            self.announcer.announce(signals);
        }
        Ok(())
    }

    /// `submit`'s transaction, run again (whole) when Postgres aborted it for a deadlock: batches
    /// that share keys in different orders can deadlock, and the loser's retry then sees the
    /// winner's records.
    async fn submit_once(
        &self,
        batch: Vec<NewTask>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Submitted>, StoreError> {
        let mut tx = self.begin().await?;
        let out = submit::submit_batch(&mut tx, batch, now).await?;
        self.commit(tx, &wake::after_submit(&out)).await?;
        Ok(out)
    }

    async fn fire_due_once(&self, now: DateTime<Utc>, limit: u32) -> Result<FirePass, StoreError> {
        let mut tx = self.begin().await?;
        let pass = crate::fire::fire_due(&mut jobs::Fire(&mut tx), now, limit).await?;
        self.commit(tx, &wake::after_fire(&pass)).await?;
        Ok(pass)
    }
}

/// Binds a list of queue names as one `text[]` (for `= ANY($n)`).
fn queue_list(queues: &[QueueName]) -> Vec<String> {
    queues.iter().map(|q| q.as_str().to_owned()).collect()
}

/// How many times a transaction that Postgres aborted for a deadlock or a serialization failure is
/// run in all.
const ATTEMPTS: usize = 5;

/// A short random pause before running an aborted transaction again, so that two transactions
/// that deadlocked do not meet again at once (the loser's retry used to take the contested key
/// before the winner had woken up, and deadlock again).
async fn backoff(attempt: usize) {
    let ms = rand::random::<u64>() % (5 * attempt as u64) + 1;
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// Whether the error is Postgres aborting a transaction that may succeed when run again.
fn retryable(e: &StoreError) -> bool {
    let StoreError::Unavailable(source) = e else {
        return false;
    };
    let Some(sqlx::Error::Database(db)) = source.downcast_ref::<sqlx::Error>() else {
        return false;
    };
    // deadlock_detected, serialization_failure. (No unique violation is retried: every race on a
    // unique key is an `ON CONFLICT`, so one that escapes is a real duplicate.)
    matches!(db.code().as_deref(), Some("40P01" | "40001"))
}

#[async_trait]
impl Store for PgStore {
    fn wakeups(&self) -> Arc<Wakeups> {
        self.wakeups.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// The database's clock, from an offset re-measured at most every 10 s (no query per call).
    async fn now(&self) -> Result<DateTime<Utc>, StoreError> {
        Ok(self.clock.now(&self.pool).await)
    }

    async fn create_job(&self, job: Job, replace: bool) -> Result<Job, StoreError> {
        let mut tx = self.begin().await?;
        let out = jobs::create(&mut tx, job, replace).await?;
        self.commit(tx, &wake::after_job_write()).await?;
        Ok(out)
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        jobs::get(&self.pool, id).await
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest,
    ) -> Result<Page<Job>, StoreError> {
        jobs::list(&self.pool, filter, page).await
    }

    async fn update_job(&self, job: Job, expected: i64) -> Result<Cas<Job>, StoreError> {
        let mut tx = self.begin().await?;
        let out = jobs::update(&mut tx, job, expected).await?;
        self.commit(tx, &wake::after_job_write()).await?;
        Ok(out)
    }

    async fn delete_job(&self, id: &JobId, expected: Option<i64>) -> Result<Cas<()>, StoreError> {
        let mut tx = self.begin().await?;
        let out = jobs::delete(&mut tx, id, expected).await?;
        self.commit(tx, &wake::after_job_write()).await?;
        Ok(out)
    }

    async fn job_runs(&self, id: &JobId, limit: u32) -> Result<Vec<FireRecord>, StoreError> {
        jobs::runs(&self.pool, id, limit).await
    }

    async fn fire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<FirePass, StoreError> {
        let mut attempt = 1;
        loop {
            match self.fire_due_once(now, limit).await {
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    backoff(attempt).await;
                    attempt += 1;
                }
                out => return out,
            }
        }
    }

    async fn next_fire_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        jobs::next_fire_at(&self.pool).await
    }

    async fn submit(
        &self,
        batch: Vec<NewTask>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Submitted>, StoreError> {
        let mut attempt = 1;
        loop {
            match self.submit_once(batch.clone(), now).await {
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    backoff(attempt).await;
                    attempt += 1;
                }
                out => return out,
            }
        }
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        tasks::get(&self.pool, id).await
    }

    async fn list_tasks(
        &self,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<Task>, StoreError> {
        tasks::list(&self.pool, filter, page).await
    }

    async fn cancel_task(
        &self,
        id: TaskId,
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, StoreError> {
        let mut tx = self.begin().await?;
        let out = tasks::cancel(&mut tx, id, now).await?;
        self.commit(tx, &wake::after_cancel(&out)).await?;
        Ok(out.map(|(t, _)| t))
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Claim>, StoreError> {
        let mut tx = self.begin().await?;
        let out = tasks::claim(&mut tx, req).await?;
        self.commit(tx, &[]).await?;
        Ok(out)
    }

    async fn claim_one(
        &self,
        id: TaskId,
        worker: &WorkerId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Claim>, StoreError> {
        let mut tx = self.begin().await?;
        let out = tasks::claim_one(&mut tx, id, worker, now, lease_until).await?;
        self.commit(tx, &[]).await?;
        Ok(out)
    }

    async fn claim_ids(
        &self,
        ids: &[TaskId],
        worker: &WorkerId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut tx = self.begin().await?;
        let out = tasks::claim_ids(&mut tx, ids, worker, now, lease_until).await?;
        self.commit(tx, &[]).await?;
        Ok(out)
    }

    async fn renew_leases(
        &self,
        worker: &WorkerId,
        leases: &[Lease],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Lease>, StoreError> {
        let mut tx = self.begin().await?;
        let out = tasks::renew(&mut tx, worker, leases, lease_until).await?;
        self.commit(tx, &[]).await?;
        Ok(out)
    }

    async fn finish(
        &self,
        lease: Lease,
        finish: Finish,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError> {
        let mut tx = self.begin().await?;
        let task = tasks::finish(&mut tx, lease, finish, now).await?;
        self.commit(tx, &wake::after_finish([&task])).await?;
        Ok(task)
    }

    async fn finish_many(
        &self,
        items: Vec<(Lease, Finish)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let mut tx = self.begin().await?;
        let out = tasks::finish_many(&mut tx, items, now).await?;
        let signals = wake::after_finish(out.iter().filter_map(|r| r.as_ref().ok()));
        self.commit(tx, &signals).await?;
        Ok(out)
    }

    async fn release(&self, lease: Lease, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tasks::release(&mut tx, lease, now).await?;
        self.commit(tx, &wake::after_release()).await
    }

    async fn next_ready_at(
        &self,
        queues: &[QueueName],
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        tasks::next_ready_at(&self.pool, queues).await
    }

    async fn take_for_dispatch(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        redeliver_before: DateTime<Utc>,
        mark: DateTime<Utc>,
    ) -> Result<Vec<Hint>, StoreError> {
        let mut tx = self.begin().await?;
        let out = outbox::take_for_dispatch(&mut tx, now, limit, redeliver_before, mark).await?;
        self.commit(tx, &[]).await?;
        Ok(out)
    }

    async fn next_ready_at_any(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        outbox::next_ready_at_any(&self.pool).await
    }

    async fn mark_dispatched(
        &self,
        ids: &[TaskId],
        taken: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        outbox::mark_dispatched(&mut tx, ids, taken, at).await?;
        self.commit(tx, &[]).await
    }

    async fn reap_leases(&self, now: DateTime<Utc>) -> Result<Vec<Reaped>, StoreError> {
        let mut tx = self.begin().await?;
        let out = tasks::reap(&mut tx, now).await?;
        self.commit(tx, &wake::after_reap(&out)).await?;
        Ok(out)
    }

    async fn expire_tasks(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = tasks::expire(&mut tx, now).await?;
        self.commit(tx, &wake::after_expire(n)).await?;
        Ok(n)
    }

    async fn prune(
        &self,
        now: DateTime<Utc>,
        workers_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let keys = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let workers = sqlx::query("DELETE FROM workers WHERE last_heartbeat_at < $1")
            .bind(workers_before)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        self.commit(tx, &[]).await?;
        Ok(keys.rows_affected() + workers.rows_affected())
    }

    async fn worker_heartbeat(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        workers::heartbeat(&self.pool, info).await
    }

    async fn remove_worker(&self, id: &WorkerId) -> Result<(), StoreError> {
        workers::remove(&self.pool, id).await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        workers::list(&self.pool).await
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        workers::queue_depths(&self.pool).await
    }
}
