//! Maintenance: the lease reaper (returns the tasks of dead workers to the queue), the expirer
//! (tasks not started by `expires_at`) and the pruner (idempotency records past their TTL, silent
//! workers). One pass is `run_once`, which tests call directly.
//!
//! Invariant: every step is an idempotent store transaction, so two maintainers running at once (or
//! one restarted mid-pass) do no harm; the store reaps each expired attempt once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::locks::{LockLease, Locks};
use crate::metrics as m;
use crate::store::{Reaped, Store, StoreError};

/// A worker silent this long is dropped from `GET /api/v1/workers`.
pub const WORKER_FORGET_AFTER: chrono::Duration = chrono::Duration::minutes(5);

pub struct Maintenance {
    store: Arc<dyn Store>,
    every: Duration,
    /// With several processes, only the holder of the `maintenance` leader lease runs the passes.
    locks: Option<Arc<dyn Locks>>,
}

/// The name of the leader lease.
pub const LEADER_LOCK: &str = "maintenance-leader";

/// The `lock` label of the leader lease's series (its role, not its key).
pub const LEADER_LOCK_LABEL: &str = "maintenance";

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pass {
    pub reaped: Vec<Reaped>,
    pub expired: u64,
    pub pruned: u64,
}

impl Maintenance {
    pub fn new(store: Arc<dyn Store>, every: Duration) -> Self {
        Self {
            store,
            every,
            locks: None,
        }
    }

    /// Runs passes only while holding the leader lease in `locks`.
    pub fn with_leader_lease(mut self, locks: Arc<dyn Locks>) -> Self {
        self.locks = Some(locks);
        self
    }

    fn lease_ttl(&self) -> Duration {
        (self.every * 3).max(Duration::from_secs(5))
    }

    /// Keeps or takes the leader lease; `true` while this process leads.
    async fn lead(&self, lease: &mut Option<LockLease>) -> bool {
        let Some(locks) = &self.locks else {
            return true;
        };
        let ttl = self.lease_ttl();
        if let Some(held) = lease.as_ref() {
            match locks.extend(held, ttl).await {
                Ok(true) => return true,
                Ok(false) => {
                    tracing::warn!(term = held.fence, "lost the maintenance leader lease");
                    *lease = None;
                    lost_leadership();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot extend the maintenance leader lease");
                    *lease = None;
                    lost_leadership();
                    return false;
                }
            }
        }
        let acquired = locks.acquire(LEADER_LOCK, ttl).await;
        let outcome = match &acquired {
            Ok(Some(_)) => "acquired",
            Ok(None) => "contended",
            Err(_) => "error",
        };
        metrics::counter!(m::LOCK_ACQUISITIONS_TOTAL, "lock" => LEADER_LOCK_LABEL, "outcome" => outcome)
            .increment(1);
        match acquired {
            Ok(Some(l)) => {
                tracing::info!(term = l.fence, "leading maintenance");
                metrics::gauge!(m::LEADER, "lock" => LEADER_LOCK_LABEL).set(1.0);
                // A fence is a counter far below 2^53: exact as a float.
                metrics::gauge!(m::LEADER_TERM, "lock" => LEADER_LOCK_LABEL).set(l.fence as f64);
                *lease = Some(l);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(error = %e, "cannot take the maintenance leader lease");
                false
            }
        }
    }

    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Pass, StoreError> {
        let reaped = self.store.reap_leases(now).await?;
        for r in &reaped {
            tracing::warn!(task_id = %r.task_id, state = r.state.as_str(), "lease expired; task reaped");
        }
        metrics::counter!(m::LEASES_REAPED_TOTAL).increment(reaped.len() as u64);
        let expired = self.store.expire_tasks(now).await?;
        metrics::counter!(m::TASKS_EXPIRED_TOTAL).increment(expired);
        let pruned = self.store.prune(now, now - WORKER_FORGET_AFTER).await?;
        Ok(Pass {
            reaped,
            expired,
            pruned,
        })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        self.register_series();
        let mut lease = None;
        // A fixed period, not a sleep after each pass: the pass's own duration must not add to the
        // time a dead worker's task waits after its lease expired (at most the lease plus `every`).
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if self.lead(&mut lease).await {
                let pass = async {
                    let now = self.store.now().await?;
                    self.run_once(now).await
                };
                // Bounded: a store that stops answering must not wedge the leader.
                let pass =
                    crate::store::bounded(crate::scheduler::PASS_BOUND, "the pass", pass).await;
                if let Err(e) = pass {
                    tracing::warn!(error = %e, "maintenance pass failed");
                }
            }
        }
        if let (Some(locks), Some(l)) = (&self.locks, &lease) {
            let _ = locks.release(l).await;
            metrics::gauge!(m::LEADER, "lock" => LEADER_LOCK_LABEL).set(0.0);
            metrics::gauge!(m::LEADER_TERM, "lock" => LEADER_LOCK_LABEL).set(0.0);
        }
    }

    /// Exports this service's series at 0 before anything happens.
    fn register_series(&self) {
        metrics::counter!(m::LEASES_REAPED_TOTAL).increment(0);
        metrics::counter!(m::TASKS_EXPIRED_TOTAL).increment(0);
        if self.locks.is_some() {
            for outcome in m::LOCK_OUTCOMES {
                metrics::counter!(m::LOCK_ACQUISITIONS_TOTAL, "lock" => LEADER_LOCK_LABEL, "outcome" => outcome)
                    .increment(0);
            }
            metrics::counter!(m::LOCK_LEASES_LOST_TOTAL, "lock" => LEADER_LOCK_LABEL).increment(0);
            // Registered without a value: another instance in this process may lead.
            metrics::gauge!(m::LEADER, "lock" => LEADER_LOCK_LABEL).increment(0.0);
            metrics::gauge!(m::LEADER_TERM, "lock" => LEADER_LOCK_LABEL).increment(0.0);
        }
    }
}

/// Records the loss of the leader lease this process held.
fn lost_leadership() {
    metrics::counter!(m::LOCK_LEASES_LOST_TOTAL, "lock" => LEADER_LOCK_LABEL).increment(1);
    metrics::gauge!(m::LEADER, "lock" => LEADER_LOCK_LABEL).set(0.0);
    metrics::gauge!(m::LEADER_TERM, "lock" => LEADER_LOCK_LABEL).set(0.0);
}
