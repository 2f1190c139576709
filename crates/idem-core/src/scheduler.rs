//! The scheduler engine: fires due jobs through [`Store::fire_due`] and sleeps until the earliest
//! `next_run_at` or until a job changes. It never busy-polls; `max_sleep` only bounds how stale its
//! view can get when another process changes a job without a wake-up reaching this one.
//!
//! Invariant: the engine holds no state between passes, so any number of schedulers may run against
//! one store and a restart loses nothing: the store's transaction decides each fire once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::job::{FireOutcome, FireRecord};
use crate::store::{Store, StoreError};

/// The longest one pass may take before it is abandoned (its transaction rolls back) and retried.
pub const PASS_BOUND: Duration = Duration::from_secs(30);

/// How many jobs one `fire_due` call may take; a pass repeats it until fewer come back.
pub const FIRE_BATCH: u32 = 256;

/// Concurrent `fire_due` transactions in one pass.
pub const FIRE_LANES: usize = 4;

pub struct Scheduler {
    store: Arc<dyn Store>,
    /// The longest sleep between passes when no change is signalled.
    max_sleep: Duration,
}

impl Scheduler {
    pub fn new(store: Arc<dyn Store>, max_sleep: Duration) -> Self {
        Self { store, max_sleep }
    }

    /// One pass: fires every job due at `now`, in [`FIRE_LANES`] concurrent store transactions
    /// (each takes its own due jobs, as concurrent schedulers do, so each slot still fires once);
    /// on a shared database the lanes' round trips overlap. Quarantined jobs are logged and counted
    /// here.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Vec<FireRecord>, StoreError> {
        let lanes = (0..FIRE_LANES).map(|_| self.lane(now));
        let mut all = Vec::new();
        for lane in futures::future::join_all(lanes).await {
            all.extend(lane?);
        }
        Ok(all)
    }

    /// One lane of a pass: batches until a batch comes back short.
    async fn lane(&self, now: DateTime<Utc>) -> Result<Vec<FireRecord>, StoreError> {
        let mut all = Vec::new();
        loop {
            let pass = self.store.fire_due(now, FIRE_BATCH).await?;
            for q in &pass.quarantined {
                tracing::error!(job_id = %q.job_id, reason = %q.reason,
                    "job quarantined: it cannot be read or planned; the other jobs fire as usual");
                metrics::counter!("idem_jobs_quarantined_total").increment(1);
            }
            all.extend(pass.fires);
            if pass.jobs < FIRE_BATCH as usize {
                return Ok(all);
            }
        }
    }

    /// Runs passes until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.store.wakeups().subscribe_jobs();
        let mut failures = 0u32;
        tracing::info!("scheduler started");
        loop {
            // Mark the current change as seen *before* querying, so a change committed while we
            // query wakes the next sleep instead of being missed.
            changes.borrow_and_update();
            // Waits are measured on the store's clock (the one due times are written in), minus
            // the time the pass itself took.
            let started = std::time::Instant::now();
            // Bounded: a store that stops answering mid-pass must not wedge this scheduler.
            let pass = crate::store::bounded(PASS_BOUND, "the pass", self.pass()).await;
            let wait = match pass {
                Ok((now, next)) => {
                    failures = 0;
                    let until = next.map_or(self.max_sleep, |n| {
                        (n - now)
                            .to_std()
                            .unwrap_or(Duration::ZERO)
                            .min(self.max_sleep)
                    });
                    until.saturating_sub(started.elapsed())
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "scheduler pass failed; retrying with backoff");
                    }
                    Duration::from_millis(250 * u64::from(failures.min(20)))
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("scheduler stopped");
    }

    /// One pass at the store's `now`; returns that `now` and the next due time.
    async fn pass(&self) -> Result<(DateTime<Utc>, Option<DateTime<Utc>>), StoreError> {
        let now = self.store.now().await?;
        let fires = self.run_once(now).await?;
        for f in &fires {
            metrics::counter!("idem_scheduler_fires_total", "outcome" => f.outcome.as_str())
                .increment(1);
            if f.outcome == FireOutcome::KeyConflict {
                tracing::warn!(job_id = %f.job_id, scheduled_at = %f.scheduled_at,
                    "fire recorded as key_conflict: its key is held by a task with another request");
            }
            if f.outcome == FireOutcome::Fired {
                let late = (f.recorded_at - f.scheduled_at)
                    .num_microseconds()
                    .unwrap_or(0);
                metrics::histogram!("idem_scheduler_lateness_seconds").record(late as f64 / 1e6);
            }
        }
        Ok((now, self.store.next_fire_at().await?))
    }
}
