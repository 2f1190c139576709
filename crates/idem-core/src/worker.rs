//! The worker engine: claims runnable tasks from the store, runs each handler under its lease with a
//! timeout, renews the leases, and records each attempt's outcome with its fencing token.
//!
//! Invariants:
//! - a task runs only under a lease the store granted; the outcome is written with the attempt number,
//!   so a result from an attempt the store has superseded (reaped, cancelled) is refused there;
//! - a timeout, a cancel or a hard shutdown drops the handler's future (and cancels its token), so the
//!   handler really stops;
//! - on shutdown the worker stops claiming, lets running tasks finish for a grace period, then hands the
//!   rest back to the queue (`release`), so nothing it held is lost or waits for a lease to expire.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Acker, Broker};
use crate::completer::Completer;
use crate::handler::{Registry, TaskContext, TaskError};
use crate::ids::{QueueName, TaskId, WorkerId};
use crate::retry::backoff;
use crate::store::{ClaimRequest, Lease, Store, StoreError};
use crate::task::{Claim, ErrorInfo, Finish};
use crate::time::secs_f64;
use crate::worker_info::WorkerInfo;

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
}

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

/// One running attempt, as the worker tracks it.
struct Running {
    attempt: i32,
    cancel: CancellationToken,
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
}

/// How one attempt ended inside the worker.
enum Ended {
    Done(Result<serde_json::Value, TaskError>),
    /// The task's token was cancelled: by the API, a lost lease, or a hard shutdown.
    Stopped,
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
        }
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
        tracing::info!(worker = %this.cfg.id, "worker stopped");
    }

    /// Spawns one claimed attempt on a slot; `acker` settles its broker message afterwards.
    fn spawn_attempt(
        self: &Arc<Self>,
        run: &Run,
        claim: Claim,
        permit: tokio::sync::OwnedSemaphorePermit,
        acker: Option<Box<dyn Acker>>,
    ) {
        let me = self.clone();
        let token = run.hard_stop.child_token();
        let hard = run.hard_stop.clone();
        run.tracker.spawn(async move {
            me.execute(claim, token, hard).await;
            if let Some(acker) = acker {
                if let Err(e) = acker.ack().await {
                    // The message comes back; the claim will find the task finished and drop it.
                    tracing::debug!(error = %e, "ack failed");
                }
            }
            drop(permit);
        });
    }

    /// The store-queue mode: claim batches straight from the store.
    async fn store_loop(self: Arc<Self>, run: &Run, shutdown: &CancellationToken) {
        let mut ready = self.store.wakeups().subscribe_tasks();
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            ready.borrow_and_update();
            let free = run.slots.available_permits() as u32;
            let mut wait = self.cfg.max_idle;
            if free > 0 {
                let started = Instant::now();
                let claimed = match self.store.now().await {
                    Ok(now) => self.claim(free, now).await.map(|c| (now, c)),
                    Err(e) => Err(e),
                };
                match claimed {
                    Ok((now, claims)) => {
                        if failures > 0 {
                            tracing::info!("store reachable again; claiming");
                        }
                        failures = 0;
                        let got = claims.len() as u32;
                        for claim in claims {
                            let permit = run
                                .slots
                                .clone()
                                .try_acquire_owned()
                                .expect("a slot per claim");
                            self.spawn_attempt(run, claim, permit, None);
                        }
                        if got == free {
                            continue; // there may be more; the slots decide
                        }
                        if got == 0 {
                            // Sleep until the earliest waiting task is due (on the store's clock).
                            if let Ok(Some(at)) = self.store.next_ready_at(&self.cfg.queues).await {
                                let until = (at - now).to_std().unwrap_or(Duration::ZERO);
                                wait = wait.min(until.saturating_sub(started.elapsed()));
                            }
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(error = %e, "claim failed; retrying with backoff");
                        }
                        wait = Duration::from_millis(250 * u64::from(failures.min(20)));
                    }
                }
            }
            let free_now = run.slots.available_permits();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = ready.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                // A slot freed while all were busy: look for more work at once.
                Ok(p) = run.slots.clone().acquire_owned(), if free_now == 0 => drop(p),
            }
        }
    }

    /// The broker mode: each delivery is a hint; the task is claimed in the store before it runs and
    /// the message is acknowledged only after the outcome is committed. A hint whose task cannot be
    /// claimed (a duplicate, already finished, cancelled) is acknowledged and dropped.
    async fn broker_loop(
        self: Arc<Self>,
        broker: Arc<dyn Broker>,
        run: &Run,
        shutdown: &CancellationToken,
    ) {
        let prefetch = u16::try_from(self.cfg.concurrency).unwrap_or(u16::MAX);
        let mut failures = 0u32;
        'consume: while !shutdown.is_cancelled() {
            let mut consumer = match broker.consume(&self.cfg.queues, prefetch).await {
                Ok(c) => {
                    if failures > 0 {
                        tracing::info!("broker reachable again; consuming");
                    }
                    failures = 0;
                    c
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot consume from the broker; retrying with backoff");
                    }
                    let wait = Duration::from_millis(250 * u64::from(failures.min(20)));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => continue 'consume,
                    }
                }
            };
            loop {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    p = run.slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                };
                let delivery = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    d = consumer.next() => d,
                };
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "broker consumer lost; consuming again");
                        continue 'consume;
                    }
                };
                let claimed = match self.store.now().await {
                    Ok(now) => {
                        self.store
                            .claim_one(
                                delivery.hint.task_id,
                                &self.cfg.id,
                                now,
                                self.lease_until(now),
                            )
                            .await
                    }
                    Err(e) => Err(e),
                };
                match claimed {
                    Ok(Some(claim)) => self.spawn_attempt(run, claim, permit, Some(delivery.acker)),
                    Ok(None) => {
                        metrics::counter!("idem_deliveries_dropped_total").increment(1);
                        let _ = delivery.acker.ack().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claim failed; returning the message");
                        let _ = delivery.acker.requeue().await;
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        }
                    }
                }
            }
        }
    }

    /// Runs one claimed attempt to its end and records the outcome.
    pub async fn execute(
        &self,
        claim: Claim,
        token: CancellationToken,
        hard_stop: CancellationToken,
    ) {
        let task = claim.task;
        let lease = Lease {
            task_id: task.id,
            attempt: task.attempts,
        };
        self.running.lock().unwrap().insert(
            task.id,
            Running {
                attempt: task.attempts,
                cancel: token.clone(),
            },
        );
        metrics::gauge!("idem_workers_busy").increment(1.0);
        let wait = (Utc::now() - task.scheduled_at).num_milliseconds().max(0) as f64 / 1e3;
        metrics::histogram!("idem_task_queue_wait_seconds", "queue" => task.queue.to_string())
            .record(wait);

        let timeout = secs_f64(task.timeout_seconds);
        let started = Instant::now();
        let ended = match self.registry.get(&task.task) {
            None => Ended::Done(Err(TaskError::give_up(
                "unknown_task",
                format!(
                    "no handler is registered for {:?} on this worker",
                    task.task.as_str()
                ),
            ))),
            Some(handler) => {
                let ctx = TaskContext {
                    task_id: task.id,
                    attempt: task.attempts,
                    idempotency_key: task.idempotency_key.clone(),
                    job_id: task.job_id.clone(),
                    timeout,
                    cancel: token.clone(),
                };
                // A panicking handler fails its attempt (and is retried) instead of taking down
                // the slot and leaving the task to wait for its lease to expire.
                let args = task.args.clone();
                let fut =
                    match std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(ctx, args))) {
                        Ok(fut) => fut,
                        Err(payload) => Box::pin(std::future::ready(Err(panicked(payload)))),
                    };
                let fut = AssertUnwindSafe(fut)
                    .catch_unwind()
                    .map(|r| r.unwrap_or_else(|payload| Err(panicked(payload))));
                tokio::select! {
                    r = tokio::time::timeout(timeout, fut) => match r {
                        Ok(r) => Ended::Done(r),
                        Err(_) => Ended::Done(Err(TaskError::retry(
                            "timeout",
                            format!("attempt exceeded timeout_seconds={}", task.timeout_seconds),
                        ))),
                    },
                    _ = token.cancelled() => Ended::Stopped,
                }
            }
        };
        // Whatever ended the attempt, nothing of the handler may run on.
        token.cancel();
        let elapsed = started.elapsed().as_secs_f64();
        metrics::histogram!("idem_task_duration_seconds", "task" => task.task.to_string())
            .record(elapsed);

        match ended {
            Ended::Stopped if hard_stop.is_cancelled() => {
                let now = self
                    .store
                    .now()
                    .await
                    .unwrap_or_else(|_| crate::time::trunc_ms(Utc::now()));
                if let Err(e) = self.store.release(lease, now).await {
                    tracing::warn!(task_id = %task.id, error = %e, "could not hand the task back; its lease will expire");
                }
            }
            Ended::Stopped => {
                tracing::info!(task_id = %task.id, "attempt stopped: task cancelled or lease lost");
            }
            Ended::Done(r) => {
                let now = self
                    .store
                    .now()
                    .await
                    .unwrap_or_else(|_| crate::time::trunc_ms(Utc::now()));
                let finish = decide(r, task.attempts, task.max_retries, now);
                let state_label = match &finish {
                    Finish::Succeeded(_) => "succeeded",
                    Finish::Retry { .. } => "retrying",
                    Finish::Failed(_) => "failed",
                };
                self.record(lease, finish).await;
                metrics::counter!("idem_tasks_total", "task" => task.task.to_string(), "state" => state_label)
                    .increment(1);
                if state_label == "retrying" {
                    metrics::counter!("idem_task_retries_total", "task" => task.task.to_string())
                        .increment(1);
                }
            }
        }
        self.running.lock().unwrap().remove(&task.id);
        metrics::gauge!("idem_workers_busy").decrement(1.0);
    }

    /// Writes an outcome, retrying while the store is unavailable: a completion must not be lost to a
    /// blip. If the store stays away past the lease, the reaper hands the task to another attempt.
    async fn record(&self, lease: Lease, finish: Finish) {
        let deadline = Instant::now() + self.cfg.lease;
        let mut delay = Duration::from_millis(50);
        loop {
            let completer = self
                .completer
                .get_or_init(|| Completer::start(self.store.clone()));
            match completer.finish(lease, finish.clone()).await {
                Ok(_) => return,
                Err(StoreError::Fenced { .. }) => {
                    metrics::counter!("idem_finish_fenced_total").increment(1);
                    tracing::info!(task_id = %lease.task_id, attempt = lease.attempt, "result refused: attempt superseded");
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(task_id = %lease.task_id, error = %e, "could not record the outcome; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(task_id = %lease.task_id, error = %e, "gave up recording the outcome; the lease will expire and the task run again");
                    return;
                }
            }
        }
    }

    /// Renews leases and reports the worker's heartbeat every third of the lease; stops the handlers
    /// of leases the store says this worker lost.
    async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = self.cfg.lease / 3;
        loop {
            self.heartbeat_once().await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One heartbeat: renews the leases and writes the worker row.
    pub async fn heartbeat_once(&self) {
        let now = self
            .store
            .now()
            .await
            .unwrap_or_else(|_| crate::time::trunc_ms(Utc::now()));
        let leases: Vec<Lease> = self
            .running
            .lock()
            .unwrap()
            .iter()
            .map(|(id, r)| Lease {
                task_id: *id,
                attempt: r.attempt,
            })
            .collect();
        if !leases.is_empty() {
            match self
                .store
                .renew_leases(&self.cfg.id, &leases, self.lease_until(now))
                .await
            {
                Ok(lost) => {
                    let running = self.running.lock().unwrap();
                    for l in lost {
                        if let Some(r) = running.get(&l.task_id).filter(|r| r.attempt == l.attempt)
                        {
                            r.cancel.cancel();
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
            }
        }
        let info = WorkerInfo {
            id: self.cfg.id.clone(),
            host: self.cfg.host.clone(),
            queues: self.cfg.queues.clone(),
            concurrency: self.cfg.concurrency,
            running: leases.len() as u32,
            started_at: self.started_at,
            last_heartbeat_at: now,
        };
        if let Err(e) = self.store.worker_heartbeat(&info).await {
            tracing::debug!(error = %e, "worker heartbeat failed");
        }
    }

    /// Stops a running handler at once when the API cancels its task in this process.
    async fn cancel_listener(self: Arc<Self>, stop: CancellationToken) {
        let mut cancels = self.store.wakeups().subscribe_cancels();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = cancels.recv() => match r {
                    Ok(id) => {
                        if let Some(r) = self.running.lock().unwrap().get(&id) {
                            r.cancel.cancel();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// The error of an attempt whose handler panicked.
fn panicked(payload: Box<dyn std::any::Any + Send>) -> TaskError {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the handler panicked".to_owned());
    TaskError::retry("panic", message)
}

/// Applies the retry policy to an attempt's result: attempt `n` (1-based) may be retried while
/// `n <= max_retries`, after the exponential backoff (or the handler's own delay, if longer).
pub fn decide(
    r: Result<serde_json::Value, TaskError>,
    attempt: i32,
    max_retries: i32,
    now: DateTime<Utc>,
) -> Finish {
    let (error, after) = match r {
        Ok(v) => return Finish::Succeeded(v),
        Err(TaskError::GiveUp(e)) => return Finish::Failed(e),
        Err(TaskError::Retry(e)) => (e, Duration::ZERO),
        Err(TaskError::RetryAfter { after, error }) => (error, after),
    };
    if attempt > max_retries {
        return Finish::Failed(error);
    }
    let delay = backoff(attempt.max(1) as u32, rand::random::<f64>()).max(after);
    Finish::Retry {
        at: crate::time::trunc_ms(now + chrono::Duration::from_std(delay).unwrap_or_default()),
        error,
    }
}

/// An error for a handler that panicked or was refused: callers use it in logs and tests.
pub fn error_of(finish: &Finish) -> Option<&ErrorInfo> {
    match finish {
        Finish::Succeeded(_) => None,
        Finish::Retry { error, .. } | Finish::Failed(error) => Some(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn success_is_final() {
        assert_eq!(
            decide(Ok(json!(1)), 1, 3, now()),
            Finish::Succeeded(json!(1))
        );
    }

    #[test]
    fn retries_stop_after_max_retries() {
        let err = || Err(TaskError::retry("error", "boom"));
        for attempt in 1..=3 {
            assert!(
                matches!(decide(err(), attempt, 3, now()), Finish::Retry { .. }),
                "{attempt}"
            );
        }
        assert!(matches!(decide(err(), 4, 3, now()), Finish::Failed(_)));
        assert!(matches!(decide(err(), 1, 0, now()), Finish::Failed(_)));
    }

    #[test]
    fn give_up_is_final_even_with_retries_left() {
        let r = decide(Err(TaskError::give_up("bad_args", "x")), 1, 5, now());
        assert!(matches!(r, Finish::Failed(e) if e.kind == "bad_args"));
    }

    #[test]
    fn retry_after_is_never_sooner_than_asked() {
        let r = decide(
            Err(TaskError::RetryAfter {
                after: Duration::from_secs(100),
                error: ErrorInfo::new("http_status", "429"),
            }),
            1,
            5,
            now(),
        );
        match r {
            Finish::Retry { at, .. } => assert!(at >= now() + chrono::Duration::seconds(100)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backoff_delays_the_first_retry_by_half_to_one_second() {
        match decide(Err(TaskError::retry("error", "x")), 1, 3, now()) {
            Finish::Retry { at, .. } => {
                let d = (at - now()).num_milliseconds();
                assert!((500..=1000).contains(&d), "{d}");
            }
            other => panic!("{other:?}"),
        }
    }
}
