//! The worker engine: claims runnable tasks from the store, runs each handler under its lease with a
//! timeout, renews the leases, and records each attempt's outcome with its fencing token.
//!
//! One module per concept: where work comes from ([`sources`]), one attempt ([`attempt`]), and
//! the leases ([`lease`]).
//!
//! Invariants:
//! - a task runs only under a lease the store granted; the outcome is written with the attempt number,
//!   so a result from an attempt the store has superseded (reaped, cancelled) is refused there;
//! - an attempt stops before its lease can have expired by the worker's own clock when renewals do
//!   not succeed (a worker cut off from the store), so two attempts of a task never run at once;
//! - a timeout, a cancel or a hard shutdown drops the handler's future (and cancels its token), so the
//!   handler really stops;
//! - on shutdown the worker stops claiming, lets running tasks finish for a grace period, then hands the
//!   rest back to the queue (`release`), so nothing it held is lost or waits for a lease to expire.

mod attempt;
mod lease;
mod series;
mod sources;

pub use attempt::{decide, error_of};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Acker, Broker};
use crate::completer::Completer;
use crate::handler::Registry;
use crate::ids::{QueueName, TaskId, WorkerId};
use crate::store::{ClaimRequest, Store, StoreError};
use crate::task::Claim;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: WorkerId,
    pub host: String,
    pub queues: Vec<QueueName>,
    pub concurrency: u32,
    /// How long a claim is leased; renewed every third of it. A dead worker's tasks return to the
    /// queue about this long after it died.
    pub lease: Duration,
    /// How long running tasks may finish after shutdown begins before they are handed back.
    pub shutdown_grace: Duration,
    /// Longest sleep without a wake-up (bounds the delay for work submitted by another process).
    pub max_idle: Duration,
    /// Claims a worker may hold beyond its slots, waiting locally to start (store-queue mode), so
    /// that short tasks are claimed many per transaction and the next batch is claimed while this
    /// one runs. Used only while recent attempts are short ([`PREFETCH_BELOW`]); 0 turns it off.
    pub prefetch: u32,
}

/// Prefetching beyond the free slots happens only while the recent attempts of this worker took
/// less than this on average: a claim then waits locally for milliseconds, never behind a long
/// task that holds every slot (the failure of Celery's prefetch multiplier).
pub const PREFETCH_BELOW: Duration = Duration::from_millis(50);

impl WorkerConfig {
    /// A worker id unique to this process start: `{host}:{pid}:{random}`.
    pub fn make_id(host: &str) -> WorkerId {
        WorkerId(format!(
            "{host}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }
}

/// What the run loop shares with the attempts it spawns.
struct Run {
    /// Cancelled when the grace period is over: attempts still running are handed back.
    hard_stop: CancellationToken,
    tracker: TaskTracker,
    /// One permit per concurrent attempt.
    slots: Arc<Semaphore>,
}

/// A claim this worker holds, from the claim until its attempt ends: registered in `running` at
/// once, so its lease is renewed and a cancel reaches it even while it waits in the prefetch buffer.
struct Held {
    claim: Claim,
    cancel: CancellationToken,
    /// Counts from when the claim request was sent.
    deadline: lease::Deadline,
}

/// One running attempt, as the worker tracks it.
struct Running {
    attempt: i32,
    /// Stops the handler (cancel, lost lease, hard shutdown).
    cancel: CancellationToken,
    /// When the attempt stops unless a renewal succeeds first.
    deadline: lease::Deadline,
}

pub struct Worker {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    cfg: WorkerConfig,
    /// Where work comes from: `None` claims from the store's queue table; a broker delivers hints.
    broker: Option<Arc<dyn Broker>>,
    /// Writes outcomes in groups; started by the first outcome.
    completer: OnceLock<Completer>,
    running: Arc<Mutex<HashMap<TaskId, Running>>>,
    started_at: DateTime<Utc>,
    /// Mean duration of recent attempts (an exponential moving average, in microseconds): decides
    /// whether prefetching is on.
    recent_us: std::sync::atomic::AtomicU64,
    /// The metric handles, made on first use (after the process installed its recorder).
    series: OnceLock<series::Series>,
}

impl Worker {
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>, cfg: WorkerConfig) -> Self {
        Self {
            store,
            registry,
            cfg,
            broker: None,
            completer: OnceLock::new(),
            running: Arc::default(),
            started_at: Utc::now(),
            // Unknown counts as long: a fresh worker prefetches only once it has seen short tasks,
            // so its first claim never takes a batch to sit behind one long task.
            recent_us: std::sync::atomic::AtomicU64::new(2 * PREFETCH_BELOW.as_micros() as u64),
            series: OnceLock::new(),
        }
    }

    fn series(&self) -> &series::Series {
        self.series
            .get_or_init(|| series::Series::new(&self.registry, &self.cfg.queues))
    }

    /// Takes work from a broker instead of the store's queue table.
    pub fn with_broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.cfg.lease).unwrap_or(chrono::Duration::seconds(30))
    }

    /// Claims up to `limit` tasks at `now` (the worker's claim step, for tests and the loop).
    pub async fn claim(&self, limit: u32, now: DateTime<Utc>) -> Result<Vec<Claim>, StoreError> {
        self.store
            .claim(&ClaimRequest {
                worker: self.cfg.id.clone(),
                queues: self.cfg.queues.clone(),
                limit,
                now,
                lease_until: self.lease_until(now),
            })
            .await
    }

    /// Runs until `shutdown` is cancelled, then drains as described in the module docs.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let run = Run {
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(this.cfg.concurrency as usize)),
        };
        // Added, not set: several workers may share a process (and its recorder).
        this.series()
            .slots
            .increment(f64::from(this.cfg.concurrency));
        tracing::info!(worker = %this.cfg.id, queues = ?this.cfg.queues, concurrency = this.cfg.concurrency,
            broker = this.broker.is_some(), "worker started");

        let beat = tokio::spawn(this.clone().heartbeat_loop(run.hard_stop.clone()));
        let cancels = tokio::spawn(this.clone().cancel_listener(run.hard_stop.clone()));
        match this.broker.clone() {
            None => this.clone().store_loop(&run, &shutdown).await,
            Some(broker) => this.clone().broker_loop(broker, &run, &shutdown).await,
        }
        let Run {
            hard_stop, tracker, ..
        } = run;
        tracker.close();
        let running = this.running.lock().unwrap().len();
        if running > 0 {
            tracing::info!(running, grace = ?this.cfg.shutdown_grace, "worker draining");
        }
        if tokio::time::timeout(this.cfg.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; handing running tasks back to the queue");
            hard_stop.cancel();
            tracker.wait().await;
        }
        hard_stop.cancel();
        let _ = beat.await;
        let _ = cancels.await;
        if let Err(e) = this.store.remove_worker(&this.cfg.id).await {
            tracing::debug!(error = %e, "could not remove the worker row");
        }
        this.series()
            .slots
            .decrement(f64::from(this.cfg.concurrency));
        tracing::info!(worker = %this.cfg.id, "worker stopped");
    }

    /// Registers a granted claim (`sent`: when it was requested) as held by this worker.
    fn hold(&self, run: &Run, claim: Claim, sent: Instant) -> Held {
        let cancel = run.hard_stop.child_token();
        let deadline = lease::Deadline::new(sent, self.cfg.lease);
        self.running.lock().unwrap().insert(
            claim.task.id,
            Running {
                attempt: claim.task.attempts,
                cancel: cancel.clone(),
                deadline: deadline.clone(),
            },
        );
        Held {
            claim,
            cancel,
            deadline,
        }
    }

    /// Forgets a held claim that will not run (cancelled, or its lease may have expired while it
    /// waited): nothing is reported, so the store's cancel or reaper decides what happens to it.
    fn drop_held(&self, held: &Held) {
        self.forget(held.claim.task.id, held.claim.task.attempts);
    }

    /// Removes the entry of this attempt from `running` (not a newer attempt of the same task that
    /// this worker claimed meanwhile).
    fn forget(&self, task_id: TaskId, attempt: i32) {
        let mut running = self.running.lock().unwrap();
        if running.get(&task_id).is_some_and(|r| r.attempt == attempt) {
            running.remove(&task_id);
        }
    }

    /// Whether recent attempts were short enough to claim ahead of the free slots.
    fn prefetching(&self) -> bool {
        self.cfg.prefetch > 0
            && self.recent_us.load(std::sync::atomic::Ordering::Relaxed)
                < PREFETCH_BELOW.as_micros() as u64
    }

    /// Folds one attempt's duration into the moving average (weight 1/8).
    fn record_duration(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let took = took.as_micros().min(u128::from(u32::MAX)) as u64;
        let _ = self
            .recent_us
            .fetch_update(Relaxed, Relaxed, |avg| Some(avg - avg / 8 + took / 8));
    }

    /// Spawns one held claim's attempt on a slot; `acker` settles its broker message afterwards.
    fn spawn_attempt(
        self: &Arc<Self>,
        run: &Run,
        held: Held,
        permit: tokio::sync::OwnedSemaphorePermit,
        acker: Option<Box<dyn Acker>>,
    ) {
        let me = self.clone();
        let hard = run.hard_stop.clone();
        run.tracker.spawn(async move {
            me.execute(held, hard).await;
            // Failpoint: the process dies between committing the outcome and acknowledging the
            // message (which then stays unsettled, to be redelivered).
            let died = (|| {
                fail::fail_point!("worker::after_commit", |_| true);
                false
            })();
            if let Some(acker) = acker.filter(|_| !died) {
                if let Err(e) = acker.ack().await {
                    // The message comes back; the claim will find the task finished and drop it.
                    tracing::debug!(error = %e, "ack failed");
                }
            }
            drop(permit);
        });
    }
}
