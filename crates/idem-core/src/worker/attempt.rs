//! One attempt: the handler run under its timeout, its cancel token and its lease deadline, and the
//! outcome recorded with the attempt number as the fencing token.
//!
//! Invariants: whatever ends an attempt (its result, a timeout, a cancel, a lease that could not be
//! renewed, a hard shutdown), the handler's future is dropped and its token cancelled, so nothing of
//! it runs on; an attempt stopped for its lease reports nothing.

use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tracing::Instrument;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::{Held, Worker};
use crate::completer::Completer;
use crate::handler::{TaskContext, TaskError};
use crate::retry::backoff;
use crate::store::{Lease, StoreError};
use crate::task::{ErrorInfo, Finish};
use crate::time::secs_f64;

/// How one attempt ended inside the worker.
enum Ended {
    Done(Result<serde_json::Value, TaskError>),
    /// The task's token was cancelled: by the API, a lost lease, or a hard shutdown.
    Stopped,
    /// No renewal succeeded in time: the lease may expire in the store before the next one.
    LeaseExpiring,
}

impl Worker {
    /// Runs one claimed attempt to its end and records the outcome. `sent` is when the claim request
    /// was sent: the lease deadline counts from it.
    pub(super) async fn execute(&self, held: Held, hard_stop: CancellationToken) {
        let t = &held.claim.task;
        // Every log line of the attempt carries these fields (the JSON log format flattens them).
        let span = tracing::info_span!("task.attempt", task_id = %t.id,
            job_id = t.job_id.as_ref().map(|j| j.as_str()), attempt = t.attempts,
            queue = %t.queue, task = %t.task, outcome = tracing::field::Empty,
            otel.kind = "consumer");
        crate::trace::set_parent(&span, t.traceparent.as_deref());
        self.execute_in(held, hard_stop).instrument(span).await
    }

    async fn execute_in(&self, held: Held, hard_stop: CancellationToken) {
        let Held {
            claim,
            cancel: token,
            deadline,
        } = held;
        let task = claim.task;
        let lease = Lease {
            task_id: task.id,
            attempt: task.attempts,
        };
        let series = self.series();
        let task_series = series.task(&task.task);
        series.busy.increment(1.0);
        let wait = (Utc::now() - task.scheduled_at).num_milliseconds().max(0) as f64 / 1e3;
        series.queue_wait(&task.queue).record(wait);

        let timeout = secs_f64(task.timeout_seconds);
        let started = std::time::Instant::now();
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
                // Biased, deadline first: a worker that wakes up late (paused, starved) must not
                // poll the handler once more — letting it send another byte — after its lease may
                // have expired; a cancel comes next, for the same reason.
                tokio::select! {
                    biased;
                    // The lease may expire in the store soon and another attempt start: this one
                    // stops first (one attempt at a time).
                    _ = deadline.passed() => Ended::LeaseExpiring,
                    _ = token.cancelled() => Ended::Stopped,
                    r = tokio::time::timeout(timeout, fut) => match r {
                        Ok(r) => Ended::Done(r),
                        Err(_) => Ended::Done(Err(TaskError::retry(
                            "timeout",
                            format!("attempt exceeded timeout_seconds={}", task.timeout_seconds),
                        ))),
                    },
                }
            }
        };
        // Whatever ended the attempt, nothing of the handler may run on.
        token.cancel();
        self.record_duration(started.elapsed());
        task_series.duration.record(started.elapsed().as_secs_f64());

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
            Ended::LeaseExpiring => {
                series.stopped_unrenewed.increment(1);
                tracing::warn!(task_id = %task.id, attempt = task.attempts,
                    "attempt stopped: its lease could not be renewed before it may expire; nothing is reported, the lease reaper decides");
            }
            Ended::Done(r) => {
                let now = self
                    .store
                    .now()
                    .await
                    .unwrap_or_else(|_| crate::time::trunc_ms(Utc::now()));
                let finish = decide(r, task.attempts, task.max_retries, now);
                let outcome = match &finish {
                    Finish::Succeeded(_) => "succeeded",
                    Finish::Retry { .. } => "retry",
                    Finish::Failed(_) => "failed",
                };
                tracing::Span::current().record("outcome", outcome);
                tracing::debug!(outcome, "attempt finished");
                // Counted once the store took the outcome: a refused one did not end the task.
                let counter = match &finish {
                    Finish::Succeeded(_) => &task_series.succeeded,
                    Finish::Retry { .. } => &task_series.retries,
                    Finish::Failed(_) => &task_series.failed,
                };
                if self.record(lease, finish).await {
                    counter.increment(1);
                }
            }
        }
        self.forget(task.id, task.attempts);
        series.busy.decrement(1.0);
    }

    /// Writes an outcome, retrying while the store is unavailable: a completion must not be lost to a
    /// blip. If the store stays away past the lease, the reaper hands the task to another attempt.
    /// `true` when the store took it.
    async fn record(&self, lease: Lease, finish: Finish) -> bool {
        let deadline = std::time::Instant::now() + self.cfg.lease;
        let mut delay = Duration::from_millis(50);
        loop {
            let completer = self
                .completer
                .get_or_init(|| Completer::start(self.store.clone(), self.cfg.lease));
            match completer.finish(lease, finish.clone()).await {
                Ok(_) => return true,
                Err(StoreError::Fenced { .. }) => {
                    self.series().fenced.increment(1);
                    tracing::info!(task_id = %lease.task_id, attempt = lease.attempt, "result refused: attempt superseded");
                    return false;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(task_id = %lease.task_id, error = %e, "could not record the outcome; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(task_id = %lease.task_id, error = %e, "gave up recording the outcome; the lease will expire and the task run again");
                    return false;
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
