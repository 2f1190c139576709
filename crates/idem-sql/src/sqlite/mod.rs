//! The SQLite store: idem's embedded default, one file, no servers.
//!
//! Invariants: every write runs in `BEGIN IMMEDIATE` on the single writer connection, so writers in
//! this process queue in order and writers in other processes wait on SQLite's lock (never a deadlock
//! from a read lock upgraded too late); reads use a separate pool and see the last commit (WAL).
//! Wake-ups are fired after each commit; other processes sharing the file notice within their idle
//! bound instead.

mod group;
mod jobs;
mod locks;
mod rows;
mod submit;
mod tasks;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

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
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use writer::Writer;

use crate::db_err;
use crate::wake::{self, Signal};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The embedded store over one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    /// One connection: the queue of this process's write transactions.
    writer: Writer,
    /// Readers; WAL lets them run beside the writer.
    reader: SqlitePool,
    wakeups: Arc<Wakeups>,
    /// Group commit of one-item submissions; started by the first one.
    submitter: Arc<std::sync::OnceLock<group::Submitter>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://PATH`, `sqlite::memory:` is not
    /// supported since readers and the writer need one shared file) and applies the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens without migrating (`--no-migrate`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(db_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk when it returns, so a 202 survives power loss, not only kill -9.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(false);
        let writer = Writer::connect(&opts).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            // An in-process connection has no other end that could have hung up: the pool's ping
            // before each acquire would only cost a round trip to the connection's thread.
            .test_before_acquire(false)
            .connect_with(opts.read_only(true))
            .await
            .map_err(db_err)?;
        Ok(Self {
            writer,
            reader,
            wakeups: Arc::new(Wakeups::default()),
            submitter: Arc::default(),
        })
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&mut **self.writer.lock().await?)
            .await
            .map_err(|e| StoreError::Unavailable(Box::new(e)))
    }

    /// Commits, then fires `signals` in this process (other processes sharing the file notice within
    /// their idle bound).
    async fn commit(
        &self,
        tx: Transaction<'_, Sqlite>,
        signals: &[Signal],
    ) -> Result<(), StoreError> {
        tx.commit().await.map_err(db_err)?;
        self.fire(signals);
        Ok(())
    }

    /// Fires `signals` in this process, after the commit that made them true.
    fn fire(&self, signals: &[Signal]) {
        for s in signals {
            s.fire(&self.wakeups);
        }
    }
}

/// Inserts the pending run of keyless tasks (one statement) and appends them to `out`.
async fn flush_run(
    tx: &mut sqlx::SqliteConnection,
    run: &mut Vec<NewTask>,
    now: DateTime<Utc>,
    out: &mut Vec<Submitted>,
) -> Result<(), StoreError> {
    match run.len() {
        0 => {}
        1 => out.push(tasks::submit_one(tx, run.pop().expect("one"), now, out.len()).await?),
        _ => {
            let tasks = tasks::insert_many(tx, run, now).await?;
            out.extend(tasks.into_iter().map(|task| Submitted {
                task,
                replayed: false,
            }));
            run.clear();
        }
    }
    Ok(())
}

/// Binds a list of queue names as the one JSON array that `json_each` expands.
fn queue_list(queues: &[QueueName]) -> String {
    serde_json::to_string(&queues.iter().map(|q| q.as_str()).collect::<Vec<_>>())
        .expect("strings serialize")
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

#[async_trait]
impl Store for SqliteStore {
    fn wakeups(&self) -> Arc<Wakeups> {
        self.wakeups.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn create_job(&self, job: Job, replace: bool) -> Result<Job, StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let out = jobs::create(&mut tx, job, replace).await?;
        self.commit(tx, &wake::after_job_write()).await?;
        Ok(out)
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        jobs::get(&self.reader, id).await
    }

    async fn list_jobs(
        &self,
        filter: &JobFilter,
        page: &PageRequest,
    ) -> Result<Page<Job>, StoreError> {
        jobs::list(&self.reader, filter, page).await
    }

    async fn update_job(&self, job: Job, expected: i64) -> Result<Cas<Job>, StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let out = jobs::update(&mut tx, job, expected).await?;
        self.commit(tx, &wake::after_job_write()).await?;
        Ok(out)
    }

    async fn delete_job(&self, id: &JobId, expected: Option<i64>) -> Result<Cas<()>, StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let out = jobs::delete(&mut tx, id, expected).await?;
        self.commit(tx, &wake::after_job_write()).await?;
        Ok(out)
    }

    async fn job_runs(&self, id: &JobId, limit: u32) -> Result<Vec<FireRecord>, StoreError> {
        jobs::runs(&self.reader, id, limit).await
    }

    async fn fire_due(&self, now: DateTime<Utc>, limit: u32) -> Result<FirePass, StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let pass = crate::fire::fire_due(&mut jobs::Fire(&mut tx), now, limit).await?;
        self.commit(tx, &wake::after_fire(&pass)).await?;
        Ok(pass)
    }

    async fn next_fire_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        jobs::next_fire_at(&self.reader).await
    }

    async fn submit(
        &self,
        batch: Vec<NewTask>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Submitted>, StoreError> {
        if batch.len() == 1 {
            let submitter = self
                .submitter
                .get_or_init(|| group::Submitter::start(self.writer.clone(), self.wakeups.clone()));
            let task = batch.into_iter().next().expect("one item");
            return Ok(vec![submitter.submit(task, now).await?]);
        }
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let mut out = Vec::with_capacity(batch.len());
        // Runs of tasks without keys go in with one statement each; a keyed task is decided alone,
        // in order, since a key may repeat one earlier in the batch.
        let mut run: Vec<NewTask> = Vec::new();
        for (index, t) in batch.into_iter().enumerate() {
            if t.idempotency.is_none() {
                run.push(t);
                continue;
            }
            flush_run(&mut tx, &mut run, now, &mut out).await?;
            out.push(tasks::submit_one(&mut tx, t, now, index).await?);
        }
        flush_run(&mut tx, &mut run, now, &mut out).await?;
        self.commit(tx, &wake::after_submit(&out)).await?;
        Ok(out)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        tasks::get(&self.reader, id).await
    }

    async fn list_tasks(
        &self,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<Task>, StoreError> {
        tasks::list(&self.reader, filter, page).await
    }

    async fn cancel_task(
        &self,
        id: TaskId,
        now: DateTime<Utc>,
    ) -> Result<Option<Task>, StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let out = tasks::cancel(&mut tx, id, now).await?;
        self.commit(tx, &wake::after_cancel(&out)).await?;
        Ok(out.map(|(t, _)| t))
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Claim>, StoreError> {
        let mut conn = self.writer.lock().await?;
        if let [queue] = req.queues.as_slice() {
            return tasks::claim_from_script(&mut conn, req, queue).await;
        }
        let mut tx = writer::begin(&mut conn).await?;
        let out = tasks::claim(&mut tx, req).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn claim_one(
        &self,
        id: TaskId,
        worker: &WorkerId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<Claim>, StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let out = tasks::claim_one(&mut tx, id, worker, now, lease_until).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn claim_ids(
        &self,
        ids: &[TaskId],
        worker: &WorkerId,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Claim>, StoreError> {
        // One transaction for the batch (promotion once, each hint an indexed update).
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let mut out: Vec<Claim> = Vec::with_capacity(ids.len());
        for id in ids {
            if out.iter().any(|c| c.task.id == *id) {
                continue;
            }
            if let Some(c) = tasks::claim_one(&mut tx, *id, worker, now, lease_until).await? {
                out.push(c);
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn renew_leases(
        &self,
        worker: &WorkerId,
        leases: &[Lease],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<Lease>, StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let out = tasks::renew(&mut tx, worker, leases, lease_until).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn finish(
        &self,
        lease: Lease,
        finish: Finish,
        now: DateTime<Utc>,
    ) -> Result<Task, StoreError> {
        let mut conn = self.writer.lock().await?;
        let task = tasks::finish_script(&mut conn, lease, finish, now).await?;
        self.fire(&wake::after_finish([&task]));
        Ok(task)
    }

    async fn finish_many(
        &self,
        items: Vec<(Lease, Finish)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let mut conn = self.writer.lock().await?;
        if items.len() == 1 {
            let (lease, finish) = items.into_iter().next().expect("one item");
            let out = match tasks::finish_script(&mut conn, lease, finish, now).await {
                Err(StoreError::Unavailable(e)) => return Err(StoreError::Unavailable(e)),
                r => r,
            };
            self.fire(&wake::after_finish(out.as_ref().ok()));
            return Ok(vec![out]);
        }
        if tasks::distinct_tasks(&items) {
            let out = tasks::finish_many_script(&mut conn, &items, now).await?;
            self.fire(&wake::after_finish(
                out.iter().filter_map(|r| r.as_ref().ok()),
            ));
            return Ok(out);
        }
        let mut tx = writer::begin(&mut conn).await?;
        let out = tasks::finish_many(&mut tx, items, now).await?;
        let signals = wake::after_finish(out.iter().filter_map(|r| r.as_ref().ok()));
        self.commit(tx, &signals).await?;
        Ok(out)
    }

    async fn release(&self, lease: Lease, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        tasks::release(&mut tx, lease, now).await?;
        self.commit(tx, &wake::after_release()).await
    }

    async fn next_ready_at(
        &self,
        queues: &[QueueName],
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        tasks::next_ready_at(&self.reader, queues).await
    }

    async fn take_for_dispatch(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        redeliver_before: DateTime<Utc>,
        mark: DateTime<Utc>,
    ) -> Result<Vec<Hint>, StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let out = tasks::take_for_dispatch(&mut tx, now, limit, redeliver_before, mark).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn next_ready_at_any(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        tasks::next_ready_at_any(&self.reader).await
    }

    async fn mark_dispatched(
        &self,
        ids: &[TaskId],
        taken: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        tasks::mark_dispatched(&mut tx, ids, taken, at).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn reap_leases(&self, now: DateTime<Utc>) -> Result<Vec<Reaped>, StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let out = tasks::reap(&mut tx, now).await?;
        self.commit(tx, &wake::after_reap(&out)).await?;
        Ok(out)
    }

    async fn expire_tasks(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE tasks SET state = 'expired', finished_at = ?1
             WHERE state IN ('scheduled', 'queued') AND expires_at IS NOT NULL AND expires_at <= ?1",
        )
        .bind(ms(now))
        .execute(&mut **self.writer.lock().await?)
        .await
        .map_err(db_err)?;
        for s in wake::after_expire(r.rows_affected()) {
            s.fire(&self.wakeups);
        }
        Ok(r.rows_affected())
    }

    async fn prune(
        &self,
        now: DateTime<Utc>,
        workers_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut conn = self.writer.lock().await?;
        let mut tx = writer::begin(&mut conn).await?;
        let keys = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= ?")
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        let workers = sqlx::query("DELETE FROM workers WHERE last_heartbeat_at < ?")
            .bind(ms(workers_before))
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(keys.rows_affected() + workers.rows_affected())
    }

    async fn worker_heartbeat(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        let queues = queue_list(&info.queues);
        sqlx::query(
            "INSERT INTO workers (id, host, queues, concurrency, running, started_at, last_heartbeat_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET running = excluded.running,
                 last_heartbeat_at = excluded.last_heartbeat_at",
        )
        .bind(&info.id.0)
        .bind(&info.host)
        .bind(queues)
        .bind(i64::from(info.concurrency))
        .bind(i64::from(info.running))
        .bind(ms(info.started_at))
        .bind(ms(info.last_heartbeat_at))
        .execute(&mut **self.writer.lock().await?)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn remove_worker(&self, id: &WorkerId) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM workers WHERE id = ?")
            .bind(&id.0)
            .execute(&mut **self.writer.lock().await?)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        let rows = sqlx::query("SELECT * FROM workers ORDER BY id")
            .fetch_all(&self.reader)
            .await
            .map_err(db_err)?;
        rows.iter().map(rows::worker).collect()
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT queue, state, count(*) FROM tasks
             WHERE state IN ('scheduled', 'queued', 'running', 'retrying')
             GROUP BY queue, state",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.into_iter()
            .map(|(q, s, count)| {
                Ok(QueueDepth {
                    queue: q.try_into().map_err(|e| rows::corrupt("queue", e))?,
                    state: s.parse().map_err(|e| rows::corrupt("state", e))?,
                    count,
                })
            })
            .collect()
    }
}
