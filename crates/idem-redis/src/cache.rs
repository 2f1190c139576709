//! `IdempotencyCache` on Redis: `{prefix}idem:{key}` = `"{fingerprint} {task_id}"` with the key's TTL.
//!
//! Invariant: the cache only answers "this key made task X with fingerprint F" or "don't know" —
//! never "this key is new"; the store decides that. So an unreadable entry is a miss (logged), not an
//! error, and the worst a stale or lost entry can cause is a trip to the store.

use std::time::Duration;

use async_trait::async_trait;
use idem_core::ids::TaskId;
use idem_core::locks::{IdempotencyCache, LockError};

use crate::connection::{ttl_ms, RedisLocks};

fn encode(fingerprint: &str, task: TaskId) -> String {
    format!("{fingerprint} {task}")
}

/// Splits at the last space, since a task id never contains one.
fn decode(raw: &[u8]) -> Option<(String, TaskId)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (fingerprint, task) = text.rsplit_once(' ')?;
    Some((fingerprint.to_owned(), task.parse().ok()?))
}

#[async_trait]
impl IdempotencyCache for RedisLocks {
    async fn get(&self, key: &str) -> Result<Option<(String, TaskId)>, LockError> {
        let raw: Option<Vec<u8>> = self
            .run(async {
                redis::cmd("GET")
                    .arg(self.key("idem", key))
                    .query_async(&mut self.conn())
                    .await
            })
            .await?;
        Ok(raw.and_then(|raw| {
            let entry = decode(&raw);
            if entry.is_none() {
                tracing::warn!(key, "ignoring a malformed idempotency cache entry");
            }
            entry
        }))
    }

    async fn put(
        &self,
        key: &str,
        fingerprint: &str,
        task: TaskId,
        ttl: Duration,
    ) -> Result<(), LockError> {
        self.run(async {
            redis::cmd("SET")
                .arg(self.key("idem", key))
                .arg(encode(fingerprint, task))
                .arg("PX")
                .arg(ttl_ms(ttl))
                .query_async::<()>(&mut self.conn())
                .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let task = TaskId::generate();
        for fingerprint in ["ab12", "", "with space"] {
            assert_eq!(
                decode(encode(fingerprint, task).as_bytes()),
                Some((fingerprint.to_owned(), task))
            );
        }
    }

    #[test]
    fn malformed_entries_are_misses() {
        for raw in [&b""[..], b"no-space", b"fp not-a-uuid", b"fp 0190c5a4-\xff"] {
            assert_eq!(decode(raw), None, "{raw:?}");
        }
    }
}
