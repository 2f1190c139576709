//! The worker's side of its leases: renewing them, and stopping an attempt whose lease it could not
//! renew before the lease can have expired in the store.
//!
//! Invariant (one attempt at a time): an attempt runs only while this worker can prove, by its own
//! monotonic clock, that its lease has not expired. The proof is the last renewal (or the claim) that
//! *succeeded*: the store set `lease_until` from a time no earlier than when that request was sent,
//! so the lease lasts at least `lease` from the send. The attempt is stopped at
//! `sent + lease - margin`, before the store may reap the lease and another worker start the next
//! attempt — provided the worker's clock and the store's run at nearly the same rate (not that they
//! are synchronised). A stopped attempt reports nothing; the store's reaper decides what happens next.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::store::Lease;
use crate::worker_info::WorkerInfo;

/// The share of the lease kept back as a safety margin: an attempt is stopped when 80 % of the lease
/// has passed since the last successful renewal was sent. It covers the time to stop a handler (drop
/// its future, kill a process group) and a small difference in clock rates.
const MARGIN_DIVISOR: u32 = 5;

/// When an attempt must stop, as this worker sees it; moved later by each successful renewal.
#[derive(Clone)]
pub(super) struct Deadline(Arc<watch::Sender<Instant>>);

impl Deadline {
    /// The deadline of a lease granted by a request sent at `sent`.
    pub(super) fn new(sent: Instant, lease: Duration) -> Self {
        Self(Arc::new(watch::Sender::new(stop_at(sent, lease))))
    }

    /// A renewal sent at `sent` succeeded: the lease lasts from then.
    pub(super) fn renewed(&self, sent: Instant, lease: Duration) {
        let at = stop_at(sent, lease);
        self.0.send_if_modified(|d| {
            let later = at > *d;
            if later {
                *d = at;
            }
            later
        });
    }

    /// Whether the deadline has passed already.
    pub(super) fn has_passed(&self) -> bool {
        Instant::now() >= *self.0.borrow()
    }

    /// Completes when the deadline passes without a renewal moving it.
    pub(super) async fn passed(&self) {
        let mut rx = self.0.subscribe();
        loop {
            let at = *rx.borrow_and_update();
            if Instant::now() >= at {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                // The sender lives as long as the attempt, so `changed` cannot fail while we wait.
                _ = rx.changed() => {}
            }
        }
    }
}

fn stop_at(sent: Instant, lease: Duration) -> Instant {
    sent + lease - lease / MARGIN_DIVISOR
}

impl Worker {
    /// Renews leases and reports the worker's heartbeat every third of the lease; stops the handlers
    /// of leases the store says this worker lost.
    pub(super) async fn heartbeat_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = self.cfg.lease / 3;
        loop {
            self.heartbeat_once().await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One heartbeat: renews the leases and writes the worker row. Each store call is bounded by a
    /// third of the lease, so a store that stops answering (a partition that drops packets) cannot
    /// hold up the next heartbeat; the attempts' deadlines do the rest.
    pub async fn heartbeat_once(&self) {
        let bound = self.cfg.lease / 3;
        // Taken before anything is asked of the store: the lease the store grants lasts from a time
        // no earlier than this.
        let sent = Instant::now();
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
        let renewal = async {
            let now = self.store.now().await?;
            if leases.is_empty() {
                return Ok((now, Vec::new()));
            }
            let lost = self
                .store
                .renew_leases(&self.cfg.id, &leases, self.lease_until(now))
                .await?;
            Ok::<_, crate::store::StoreError>((now, lost))
        };
        let now = match tokio::time::timeout(bound, renewal).await {
            Ok(Ok((now, lost))) => {
                let running = self.running.lock().unwrap();
                for l in &leases {
                    let Some(r) = running.get(&l.task_id).filter(|r| r.attempt == l.attempt) else {
                        continue;
                    };
                    if lost.contains(l) {
                        r.cancel.cancel();
                    } else {
                        r.deadline.renewed(sent, self.cfg.lease);
                    }
                }
                now
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, leases = leases.len(), "lease renewal failed");
                crate::time::trunc_ms(Utc::now())
            }
            Err(_) => {
                tracing::warn!(leases = leases.len(), timeout = ?bound, "lease renewal timed out");
                crate::time::trunc_ms(Utc::now())
            }
        };
        let info = WorkerInfo {
            id: self.cfg.id.clone(),
            host: self.cfg.host.clone(),
            queues: self.cfg.queues.clone(),
            concurrency: self.cfg.concurrency,
            running: leases.len() as u32,
            started_at: self.started_at,
            last_heartbeat_at: now,
        };
        match tokio::time::timeout(bound, self.store.worker_heartbeat(&info)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "worker heartbeat failed"),
            Err(_) => tracing::debug!("worker heartbeat timed out"),
        }
    }

    /// Stops a running handler at once when the API cancels its task in this process.
    pub(super) async fn cancel_listener(self: Arc<Self>, stop: CancellationToken) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_at_four_fifths_of_the_lease_after_the_send() {
        let lease = Duration::from_secs(30);
        let sent = Instant::now();
        let d = Deadline::new(sent, lease);
        d.passed().await;
        assert_eq!(Instant::now() - sent, Duration::from_secs(24));
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_renewal_moves_the_deadline_and_an_older_one_does_not() {
        let lease = Duration::from_secs(30);
        let start = Instant::now();
        let d = Deadline::new(start, lease);
        let renewer = {
            let d = d.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                d.renewed(start + Duration::from_secs(10), lease);
                // A late answer to an earlier request never moves it back.
                d.renewed(start + Duration::from_secs(5), lease);
            })
        };
        d.passed().await;
        renewer.await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(34));
    }
}
