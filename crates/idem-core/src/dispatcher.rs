//! The outbox dispatcher (broker mode): publishes a broker message for every queued task that needs
//! one. A task is committed to the store first and published after. Taking a batch marks it with a
//! short publish lease; the broker's confirm records the publish. A crash or a broker failure before
//! the confirm only delays the message by the lease: any dispatcher then publishes it. A message lost
//! inside a failed broker after its confirm is published again after `redeliver_after`; a duplicate
//! is dropped by the worker's claim.
//!
//! Invariant: no queued task is without a confirmed message for longer than the publish lease
//! (while a broker answers), or without any message for longer than `redeliver_after`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::ids::TaskId;
use crate::store::Store;

/// Hints taken and published per round trip.
pub const DISPATCH_BATCH: u32 = 500;

/// How long a dispatcher may take to get a batch confirmed before another may publish it.
pub const PUBLISH_LEASE: Duration = Duration::from_secs(10);

/// After a failed publish, the batch is taken again this much later.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

pub struct Dispatcher {
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    /// Republish a still-queued task this long after its last publish.
    redeliver_after: Duration,
    /// Longest sleep without a wake-up.
    max_idle: Duration,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        redeliver_after: Duration,
        max_idle: Duration,
    ) -> Self {
        Self {
            store,
            broker,
            redeliver_after,
            max_idle,
        }
    }

    /// Publishes one batch; returns how many hints were published.
    pub async fn run_once(&self) -> Result<usize, String> {
        let now = self.store.now().await.map_err(|e| e.to_string())?;
        let window = chrono::Duration::from_std(self.redeliver_after).unwrap_or_default();
        let lease = chrono::Duration::from_std(PUBLISH_LEASE)
            .unwrap_or_default()
            .min(window);
        // Marked so that the task is eligible again one publish lease from now: if this process
        // dies before the broker confirms, another dispatcher takes the task over then.
        let mark = now - window + lease;
        let hints = self
            .store
            .take_for_dispatch(now, DISPATCH_BATCH, now - window, mark)
            .await
            .map_err(|e| e.to_string())?;
        if hints.is_empty() {
            return Ok(0);
        }
        // A traced task gets a `task.publish` span in its trace, and its message carries that
        // span's context (the worker's attempt follows it); an untraced task costs nothing here.
        let mut hints = hints;
        for h in hints.iter_mut().filter(|h| h.traceparent.is_some()) {
            let span = tracing::info_span!("task.publish", task_id = %h.task_id, queue = %h.queue,
                otel.kind = "producer");
            crate::trace::set_parent(&span, h.traceparent.as_deref());
            if let Some(tp) = crate::trace::traceparent_of(&span) {
                h.traceparent = Some(tp);
            }
        }
        let ids: Vec<TaskId> = hints.iter().map(|h| h.task_id).collect();
        if let Err(e) = self.broker.publish(&hints).await {
            // Eligible again after a short backoff: not at once (that would spin while the broker
            // is down), and not after the whole publish lease (a recovered broker would wait for
            // it while the job's unfinished tasks hold back its next fires). If even this write
            // fails, the publish lease stands.
            let backoff = chrono::Duration::from_std(RETRY_AFTER_FAILURE).unwrap_or_default();
            let _ = self
                .store
                .mark_dispatched(&ids, mark, now - window + backoff)
                .await;
            return Err(e.to_string());
        }
        // Failpoint: the process dies between the broker's confirm and recording it.
        fail::fail_point!("dispatcher::after_confirm", |_| Ok(hints.len()));
        let confirmed = self.store.now().await.unwrap_or(now);
        // If this fails, the provisional mark stands: a duplicate message after the publish
        // lease, which the worker's claim drops.
        let _ = self.store.mark_dispatched(&ids, mark, confirmed).await;
        metrics::counter!(crate::metrics::DISPATCHED_TOTAL).increment(hints.len() as u64);
        Ok(hints.len())
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut ready = self.store.wakeups().subscribe_tasks();
        let mut failures = 0u32;
        loop {
            ready.borrow_and_update();
            // Bounded: a store or broker that stops answering must not wedge the dispatcher.
            let once = tokio::time::timeout(crate::scheduler::PASS_BOUND, self.run_once())
                .await
                .unwrap_or_else(|_| Err("the dispatch pass timed out".to_owned()));
            let wait = match once {
                Ok(n) if n as u32 == DISPATCH_BATCH => continue,
                Ok(n) => {
                    // Only a publish proves the broker is back; an empty pass proves nothing.
                    if n > 0 && failures > 0 {
                        tracing::info!(after_failures = failures, "dispatcher recovered");
                        failures = 0;
                    }
                    self.idle_wait().await
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "dispatch failed; retrying with backoff");
                    }
                    Duration::from_millis(250 * u64::from(failures.min(20)))
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ready.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Until the earliest scheduled or retrying task is due (any queue), at most `max_idle`.
    async fn idle_wait(&self) -> Duration {
        let Ok(now) = self.store.now().await else {
            return self.max_idle;
        };
        match self.store.next_ready_at_any().await {
            Ok(Some(at)) => (at - now)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(self.max_idle),
            _ => self.max_idle,
        }
    }
}
