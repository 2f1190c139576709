//! The scheduler engine: fires due jobs through [`Store::fire_due`] and sleeps until the earliest
//! `next_run_at` or until a job changes. It never busy-polls; `max_sleep` only bounds how stale its
//! view can get when another process changes a job without a wake-up reaching this one.
//!
//! Invariant: the engine holds no state between passes, so any number of schedulers may run against
//! one store and a restart loses nothing: the store's transaction decides each fire once.

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::Instrument;

use chrono::{DateTime, Utc};
use metrics::{Counter, Histogram};
use tokio_util::sync::CancellationToken;

use crate::job::{FireOutcome, FireRecord};
use crate::metrics as m;
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
    /// Also record the per-job series (`idem_job_*`): one series per job, so only on request.
    job_labels: bool,
    /// Made on first use (after the process installed its recorder), so no fire builds a label.
    series: OnceLock<Series>,
}

/// The scheduler's fixed-label series.
struct Series {
    /// `idem_scheduler_fires_total`, one per outcome in [`FireOutcome::ALL`] order.
    fires: [Counter; FireOutcome::ALL.len()],
    lateness: Histogram,
    pass: Histogram,
    quarantined: Counter,
}

impl Series {
    fn new() -> Self {
        Self {
            fires: FireOutcome::ALL
                .map(|o| metrics::counter!(m::SCHEDULER_FIRES_TOTAL, "outcome" => o.as_str())),
            lateness: metrics::histogram!(m::SCHEDULER_LATENESS_SECONDS),
            pass: metrics::histogram!(m::SCHEDULER_PASS_DURATION_SECONDS),
            quarantined: metrics::counter!(m::JOBS_QUARANTINED_TOTAL),
        }
    }
}

impl Scheduler {
    pub fn new(store: Arc<dyn Store>, max_sleep: Duration) -> Self {
        Self {
            store,
            max_sleep,
            job_labels: false,
            series: OnceLock::new(),
        }
    }

    /// Records `idem_job_fires_total{job,outcome}` and `idem_job_lateness_seconds{job}` too.
    pub fn with_job_labels(mut self, on: bool) -> Self {
        self.job_labels = on;
        self
    }

    fn series(&self) -> &Series {
        self.series.get_or_init(Series::new)
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
            // The tasks a batch fires continue its span's trace (`Job::fire_task`).
            let span = tracing::info_span!("scheduler.fire", fired = tracing::field::Empty);
            let pass = self
                .store
                .fire_due(now, FIRE_BATCH)
                .instrument(span.clone())
                .await?;
            span.record("fired", pass.fires.len());
            for q in &pass.quarantined {
                tracing::error!(job_id = %q.job_id, reason = %q.reason,
                    "job quarantined: it cannot be read or planned; the other jobs fire as usual");
                self.series().quarantined.increment(1);
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
        // Registered before the first pass, so every fixed series is exported at 0 until it counts.
        let series = self.series();
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
            series.pass.record(started.elapsed().as_secs_f64());
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
        self.record(&fires);
        Ok((now, self.store.next_fire_at().await?))
    }

    /// Counts a pass's fires: once per outcome for the pass, not once per fire.
    fn record(&self, fires: &[FireRecord]) {
        let series = self.series();
        let mut counts = [0u64; FireOutcome::ALL.len()];
        for f in fires {
            counts[f.outcome as usize] += 1;
            if f.outcome == FireOutcome::KeyConflict {
                tracing::warn!(job_id = %f.job_id, scheduled_at = %f.scheduled_at,
                    "fire recorded as key_conflict: its key is held by a task with another request");
            }
            let late = (f.outcome == FireOutcome::Fired).then(|| {
                let late = (f.recorded_at - f.scheduled_at)
                    .num_microseconds()
                    .unwrap_or(0);
                late as f64 / 1e6
            });
            if let Some(late) = late {
                series.lateness.record(late);
            }
            if self.job_labels {
                let job = f.job_id.to_string();
                metrics::counter!(m::JOB_FIRES_TOTAL, "job" => job.clone(), "outcome" => f.outcome.as_str())
                    .increment(1);
                if let Some(late) = late {
                    metrics::histogram!(m::JOB_LATENESS_SECONDS, "job" => job).record(late);
                }
            }
        }
        for (counter, n) in series.fires.iter().zip(counts) {
            counter.increment(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_outcomes_index_their_series_in_declaration_order() {
        for (i, o) in FireOutcome::ALL.into_iter().enumerate() {
            assert_eq!(o as usize, i, "{o:?}");
        }
    }
}
