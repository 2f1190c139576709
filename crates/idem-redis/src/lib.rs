//! idem's Redis backend: named leases with fencing tokens (`Locks`) and the idempotency replay cache
//! (`IdempotencyCache`), both served by one [`RedisLocks`] over a connection that reconnects by itself.
//!
//! Invariants: every key this crate writes starts with [`RedisOptions::key_prefix`]; every Redis
//! failure reaches the caller as `LockError::Unavailable` within a bounded time, never as a panic or
//! a hang; the cache only ever answers "replay of X" — the store decides whether a key is new.

mod cache;
mod connection;
mod locks;
mod scripts;

pub use connection::{RedisLocks, RedisOptions};
