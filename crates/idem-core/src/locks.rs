//! The `Locks` seam: named leases with a random token and a monotonic fencing token.
//!
//! Invariants: a lock expires after its TTL unless its holder extends it, so no crashed process holds
//! one forever; only the holder (the token) can extend or release it (compare-and-extend,
//! compare-and-delete); each successful acquisition of a name gets a fencing token greater than every
//! earlier one, so work done under a stale lease can be told apart from the current holder's.

use std::time::Duration;

use async_trait::async_trait;

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLease {
    pub name: String,
    /// Random; proves holdership.
    pub token: String,
    /// Increases with every acquisition of this name (the leader's "term").
    pub fence: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock service unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Locks: Send + Sync + 'static {
    /// Takes `name` for `ttl` if nobody holds it.
    async fn acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockLease>, LockError>;
    /// Extends a held lock; `false` when it was lost (expired, taken by another).
    async fn extend(&self, lease: &LockLease, ttl: Duration) -> Result<bool, LockError>;
    /// Releases a held lock; `false` when it was no longer ours.
    async fn release(&self, lease: &LockLease) -> Result<bool, LockError>;
    /// Answers when the lock service is reachable.
    async fn ping(&self) -> Result<(), LockError>;
}

/// The idempotency cache: a fast path in front of the store for replays. It may answer "this key
/// made task X with fingerprint F", never "this key is new" — the store decides that.
#[async_trait]
pub trait IdempotencyCache: Send + Sync + 'static {
    /// The cached `(fingerprint, task id)` of a key, if any.
    async fn get(&self, key: &str) -> Result<Option<(String, crate::ids::TaskId)>, LockError>;
    /// Remembers a key's outcome for `ttl`.
    async fn put(
        &self,
        key: &str,
        fingerprint: &str,
        task: crate::ids::TaskId,
        ttl: Duration,
    ) -> Result<(), LockError>;
}
