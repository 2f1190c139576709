//! Where a worker's work comes from: the store's queue table (claims in batches), or a broker whose
//! deliveries are hints that the worker claims in the store one by one.
//!
//! Invariant: nothing runs without a claim the store granted, and the instant each claim request was
//! sent is kept with it: the attempt's lease deadline ([`super::lease`]) counts from there.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Run, Worker};
use crate::broker::Broker;
use crate::store::bounded;

impl Worker {
    /// The store-queue mode: claim batches straight from the store.
    pub(super) async fn store_loop(self: Arc<Self>, run: &Run, shutdown: &CancellationToken) {
        let mut ready = self.store.wakeups().subscribe_tasks();
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            ready.borrow_and_update();
            let free = run.slots.available_permits() as u32;
            let mut wait = self.cfg.max_idle;
            if free > 0 {
                let sent = Instant::now();
                let claimed = async {
                    let now = self.store.now().await?;
                    self.claim(free, now).await.map(|c| (now, c))
                };
                // Bounded, so a store that stops answering cannot wedge the loop; a claim that
                // committed after the bound leases tasks this worker never runs, which the reaper
                // returns after their lease.
                let claimed = bounded(self.cfg.lease, "the claim", claimed).await;
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
                            self.spawn_attempt(run, claim, sent, permit, None);
                        }
                        if got == free {
                            continue; // there may be more; the slots decide
                        }
                        if got == 0 {
                            // Sleep until the earliest waiting task is due (on the store's clock).
                            if let Ok(Some(at)) = self.store.next_ready_at(&self.cfg.queues).await {
                                let until = (at - now).to_std().unwrap_or(Duration::ZERO);
                                wait = wait.min(until.saturating_sub(sent.elapsed()));
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
    pub(super) async fn broker_loop(
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
                let sent = Instant::now();
                let claimed = async {
                    let now = self.store.now().await?;
                    self.store
                        .claim_one(
                            delivery.hint.task_id,
                            &self.cfg.id,
                            now,
                            self.lease_until(now),
                        )
                        .await
                };
                let claimed = bounded(self.cfg.lease, "the claim", claimed).await;
                match claimed {
                    Ok(Some(claim)) => {
                        self.spawn_attempt(run, claim, sent, permit, Some(delivery.acker))
                    }
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
}
