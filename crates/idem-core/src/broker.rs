//! The `Broker` seam: delivers hints that a task may be runnable. A hint is never the truth — the
//! worker claims the task in the store before running it, so a duplicate or stale delivery is
//! dropped by the claim, and a lost one is republished by the dispatcher (transactional outbox).
//!
//! Invariant: a consumer acknowledges a delivery only after the attempt's outcome is committed to the
//! store (or the claim proved the hint stale), so a worker that dies mid-task leaves its message to be
//! redelivered.

use async_trait::async_trait;

use crate::ids::{QueueName, TaskId};

/// A hint that a task is runnable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    pub task_id: TaskId,
    pub queue: QueueName,
    /// 0..=9, higher first (where the broker supports priorities).
    pub priority: i16,
    /// The W3C `traceparent` the worker's attempt span continues (see [`crate::trace`]).
    pub traceparent: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker is unreachable or refused; retrying later may succeed.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker did not confirm a publish.
    #[error("publish not confirmed: {0}")]
    NotConfirmed(String),
    /// A message that is not an idem hint (it is acknowledged and dropped).
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Settles one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// The delivery is handled: never deliver it again.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    /// Not handled here: deliver it again (to any consumer).
    async fn requeue(self: Box<Self>) -> Result<(), BrokerError>;
}

/// One delivered hint and the handle that settles it.
pub struct Delivery {
    pub hint: Hint,
    pub acker: Box<dyn Acker>,
    /// The broker says it delivered this message before (to a consumer that did not settle it).
    pub redelivered: bool,
}

/// A stream of deliveries from some queues, at most `prefetch` unsettled at once.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; an error means the connection is gone (consume again after a backoff).
    async fn next(&mut self) -> Result<Delivery, BrokerError>;
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes hints and returns once the broker has confirmed all of them (persisted).
    async fn publish(&self, hints: &[Hint]) -> Result<(), BrokerError>;
    /// Starts consuming `queues` with at most `prefetch` unsettled deliveries.
    async fn consume(
        &self,
        queues: &[QueueName],
        prefetch: u16,
    ) -> Result<Box<dyn Consumer>, BrokerError>;
    /// Answers when the broker is reachable.
    async fn ping(&self) -> Result<(), BrokerError>;
}
