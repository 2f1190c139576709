//! `idem_dependency_up{dependency}`: every process checks its dependencies every [`CHECK_EVERY`]
//! with the checks of `/health/ready` (the store, and the broker and Redis when configured), so a
//! scheduler or a worker, which serves no API, reports them too. One round is `run_once`, which
//! tests call directly.
//!
//! Invariant: a dependency reads 1 only if its last check answered within the readiness timeout;
//! only the dependencies this process uses have a series.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use idem_core::metrics as m;
use idem_core::Store;

use crate::health::check_all;
use crate::Probe;

/// How often the dependencies are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The background check of one process's dependencies.
pub struct DependencyWatch {
    store: Arc<dyn Store>,
    /// The broker and Redis, when configured: the readiness probes.
    probes: Vec<Arc<dyn Probe>>,
}

impl DependencyWatch {
    pub fn new(store: Arc<dyn Store>, probes: Vec<Arc<dyn Probe>>) -> Self {
        Self { store, probes }
    }

    /// Checks every dependency once and sets its gauge; returns whether each answered.
    pub async fn run_once(&self) -> BTreeMap<&'static str, bool> {
        let checks = check_all(&self.store, &self.probes).await;
        checks
            .into_iter()
            .map(|(name, answer)| {
                let up = answer == "ok";
                if !up {
                    tracing::debug!(dependency = name, answer = %answer, "dependency check failed");
                }
                metrics::gauge!(m::DEPENDENCY_UP, "dependency" => name)
                    .set(f64::from(u8::from(up)));
                (name, up)
            })
            .collect()
    }

    /// Checks every [`CHECK_EVERY`], the first time at once, until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.run_once() => {}
            }
        }
    }
}
