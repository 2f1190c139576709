//! Where a worker's work comes from: the store's queue table (claims in batches, with a local
//! prefetch buffer), or a broker whose deliveries are hints that the worker claims in the store, a
//! burst of them with one call.
//!
//! Invariant: nothing runs without a claim the store granted, and the instant each claim request was
//! sent is kept with it: the attempt's lease deadline ([`super::lease`]) counts from there.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Held, Run, Worker};
use crate::broker::Broker;
use crate::store::bounded;

/// Broker hints claimed with one store call at most.
const MAX_HINT_BATCH: usize = 256;

/// How long a hint batch waits for more deliveries while the worker is under load.
const HINT_LINGER: Duration = Duration::from_millis(1);

impl Worker {
    /// The store-queue mode: claim batches straight from the store. With prefetching on, it claims
    /// up to `prefetch` more than the free slots and keeps them in a local buffer, refilled while
    /// the slots work through it, so short tasks take few claim transactions and no slot waits for
    /// a claim round trip.
    pub(super) async fn store_loop(self: Arc<Self>, run: &Run, shutdown: &CancellationToken) {
        let mut ready = self.store.wakeups().subscribe_tasks();
        let mut failures = 0u32;
        let mut buffer: VecDeque<Held> = VecDeque::new();
        // Whether the last claim found the queue drained: then only a wake-up, a timer or a freed
        // slot with nothing buffered makes the loop claim again.
        let mut drained = false;
        while !shutdown.is_cancelled() {
            ready.borrow_and_update();
            self.start_buffered(run, &mut buffer);
            let free = run.slots.available_permits();
            let extra = if self.prefetching() {
                self.cfg.prefetch as usize
            } else {
                0
            };
            // Claim for the free slots, or ahead of them while the buffer is below half.
            let want = if free > 0 {
                free + extra - buffer.len().min(extra)
            } else if !drained && buffer.len() < extra.div_ceil(2) {
                extra - buffer.len()
            } else {
                0
            };
            let mut wait = self.cfg.max_idle;
            if want > 0 {
                let sent = Instant::now();
                let claimed = async {
                    let now = self.store.now().await?;
                    self.claim(want as u32, now).await.map(|c| (now, c))
                };
                // Bounded, so a store that stops answering cannot wedge the loop; a claim that
                // committed after the bound leases tasks this worker never runs, which the reaper
                // returns after their lease.
                let claimed = bounded(self.cfg.lease, "the claim", claimed);
                tokio::pin!(claimed);
                // Slots freed during the claim start from the buffer meanwhile.
                let claimed = loop {
                    tokio::select! {
                        r = &mut claimed => break r,
                        Ok(p) = run.slots.clone().acquire_owned(), if !buffer.is_empty() => {
                            self.start_one(run, &mut buffer, p);
                        }
                    }
                };
                match claimed {
                    Ok((now, claims)) => {
                        if failures > 0 {
                            tracing::info!("store reachable again; claiming");
                        }
                        failures = 0;
                        let got = claims.len();
                        self.series().claim_batch.record(got as f64);
                        buffer.extend(claims.into_iter().map(|c| self.hold(run, c, sent)));
                        self.start_buffered(run, &mut buffer);
                        drained = got < want;
                        if !drained {
                            continue; // there may be more; the slots and the buffer decide
                        }
                        if got == 0 && buffer.is_empty() {
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
                _ = ready.changed() => drained = false,
                _ = tokio::time::sleep(wait) => drained = false,
                // A slot freed while all were busy: start a buffered claim, or look for more work.
                Ok(p) = run.slots.clone().acquire_owned(), if free_now == 0 || !buffer.is_empty() => {
                    if buffer.is_empty() {
                        drop(p);
                    } else {
                        self.start_one(run, &mut buffer, p);
                    }
                }
            }
        }
        // Shutdown: what waited in the buffer never started; hand it back at once.
        self.release_buffered(buffer).await;
    }

    /// Starts buffered claims on every free slot.
    fn start_buffered(self: &Arc<Self>, run: &Run, buffer: &mut VecDeque<Held>) {
        while !buffer.is_empty() {
            match run.slots.clone().try_acquire_owned() {
                Ok(p) => self.start_one(run, buffer, p),
                Err(_) => return,
            }
        }
    }

    /// Starts the first buffered claim that may still run on the slot `permit`: a claim cancelled
    /// while it waited, or whose lease deadline passed (renewals failed), is dropped unstarted.
    fn start_one(
        self: &Arc<Self>,
        run: &Run,
        buffer: &mut VecDeque<Held>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        while let Some(held) = buffer.pop_front() {
            if held.cancel.is_cancelled() || held.deadline.has_passed() {
                self.drop_held(&held);
                continue;
            }
            self.spawn_attempt(run, held, permit, None);
            return;
        }
    }

    /// Hands never-started claims back to the queue (shutdown).
    async fn release_buffered(&self, buffer: VecDeque<Held>) {
        if buffer.is_empty() {
            return;
        }
        let now = self
            .store
            .now()
            .await
            .unwrap_or_else(|_| crate::time::trunc_ms(chrono::Utc::now()));
        for held in buffer {
            self.drop_held(&held);
            let lease = crate::store::Lease {
                task_id: held.claim.task.id,
                attempt: held.claim.task.attempts,
            };
            if let Err(e) = self.store.release(lease, now).await {
                tracing::warn!(task_id = %lease.task_id, error = %e, "could not hand a prefetched task back; its lease will expire");
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
        let mut last_batch = 0usize;
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
                // Every delivery already here joins the batch while slots are free, so a burst is
                // claimed with one store call instead of one per message. `next` is cancel-safe:
                // a poll that finds nothing takes nothing.
                // Under load (the last batch had company) a lone delivery also waits up to
                // HINT_LINGER for more: a millisecond for one commit shared by many.
                let mut batch = vec![(delivery, permit)];
                let mut lost = None;
                let linger_until = (last_batch > 1).then(|| Instant::now() + HINT_LINGER);
                while batch.len() < MAX_HINT_BATCH {
                    let Ok(p) = run.slots.clone().try_acquire_owned() else {
                        break;
                    };
                    let next = match linger_until {
                        Some(until) => tokio::time::timeout_at(until, consumer.next()).await.ok(),
                        None => consumer.next().now_or_never(),
                    };
                    match next {
                        Some(Ok(d)) => batch.push((d, p)),
                        Some(Err(e)) => {
                            lost = Some(e);
                            break;
                        }
                        None => break,
                    }
                }
                last_batch = batch.len();
                self.claim_hints(run, batch).await;
                if let Some(e) = lost {
                    failures += 1;
                    tracing::warn!(error = %e, "broker consumer lost; consuming again");
                    continue 'consume;
                }
            }
        }
    }

    /// Claims a batch of delivered hints in one store call and starts each claimed task on its
    /// slot; a hint whose task cannot be claimed (a duplicate, finished, cancelled) is acknowledged
    /// and dropped; if the claim fails, every message goes back to the broker.
    async fn claim_hints(
        self: &Arc<Self>,
        run: &Run,
        batch: Vec<(crate::broker::Delivery, tokio::sync::OwnedSemaphorePermit)>,
    ) {
        let ids: Vec<_> = batch.iter().map(|(d, _)| d.hint.task_id).collect();
        let sent = Instant::now();
        let claimed = async {
            let now = self.store.now().await?;
            self.store
                .claim_ids(&ids, &self.cfg.id, now, self.lease_until(now))
                .await
        };
        match bounded(self.cfg.lease, "the claim", claimed).await {
            Ok(claims) => {
                self.series().claim_batch.record(claims.len() as f64);
                let mut claims: std::collections::HashMap<_, _> =
                    claims.into_iter().map(|c| (c.task.id, c)).collect();
                for (delivery, permit) in batch {
                    match claims.remove(&delivery.hint.task_id) {
                        Some(mut claim) => {
                            // The message's trace context (its publish span) wins over the
                            // stored one (the submit span): the trace then shows the publish.
                            if delivery.hint.traceparent.is_some() {
                                claim
                                    .task
                                    .traceparent
                                    .clone_from(&delivery.hint.traceparent);
                            }
                            let held = self.hold(run, claim, sent);
                            self.spawn_attempt(run, held, permit, Some(delivery.acker));
                        }
                        None => {
                            self.series().dropped.increment(1);
                            let _ = delivery.acker.ack().await;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; returning the messages");
                for (delivery, _) in batch {
                    let _ = delivery.acker.requeue().await;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}
