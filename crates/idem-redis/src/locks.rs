//! `Locks` on Redis: a lease is `{prefix}lock:{name}` = token with a TTL, taken with `SET NX PX`;
//! its fencing token is `INCR {prefix}fence:{name}`, done in the same script.
//!
//! Invariants: at most one token is stored under a lock key at a time, and only that token's holder
//! can extend or delete it (compare-and-extend, compare-and-delete, each one atomic script); every
//! lease expires unless extended; the fence of a name only grows (while Redis keeps its data).

use std::time::Duration;

use async_trait::async_trait;
use idem_core::locks::{LockError, LockLease, Locks};

use crate::connection::{ttl_ms, RedisLocks};

/// A fresh holder token: 128 random bits as 32 hex digits, so no other holder can guess it.
fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[async_trait]
impl Locks for RedisLocks {
    async fn acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockLease>, LockError> {
        let token = new_token();
        let mut invocation = self.scripts.acquire.key(self.key("lock", name));
        invocation
            .key(self.key("fence", name))
            .arg(&token)
            .arg(ttl_ms(ttl));
        let fence: Option<u64> = self
            .run(async { invocation.invoke_async(&mut self.conn()).await })
            .await?;
        Ok(fence.map(|fence| LockLease {
            name: name.to_owned(),
            token,
            fence,
        }))
    }

    async fn extend(&self, lease: &LockLease, ttl: Duration) -> Result<bool, LockError> {
        let mut invocation = self.scripts.extend.key(self.key("lock", &lease.name));
        invocation.arg(&lease.token).arg(ttl_ms(ttl));
        let extended: i64 = self
            .run(async { invocation.invoke_async(&mut self.conn()).await })
            .await?;
        Ok(extended == 1)
    }

    async fn release(&self, lease: &LockLease) -> Result<bool, LockError> {
        let mut invocation = self.scripts.release.key(self.key("lock", &lease.name));
        invocation.arg(&lease.token);
        let released: i64 = self
            .run(async { invocation.invoke_async(&mut self.conn()).await })
            .await?;
        Ok(released == 1)
    }

    async fn ping(&self) -> Result<(), LockError> {
        let pong: String = self
            .run(async { redis::cmd("PING").query_async(&mut self.conn()).await })
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(LockError::Unavailable(format!(
                "Redis answered PING with {pong:?}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_hex_digits_and_differ() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
