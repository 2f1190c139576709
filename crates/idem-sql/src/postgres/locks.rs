//! The store-backed `Locks` for PostgreSQL (used when no Redis is configured): one lease row per
//! name.
//!
//! Invariants: a row is never deleted, so its fencing counter only grows; acquiring takes an
//! absent, expired or released row in one `INSERT … ON CONFLICT` statement, so two acquirers never
//! both succeed; expiry is judged by the database's clock, so hosts with skewed clocks agree on it.
//! (Session advisory locks would need no rows, but they carry neither a TTL nor a fencing token.)

use std::time::Duration;

use async_trait::async_trait;
use idem_core::locks::{LockError, LockLease, Locks};

use super::PgStore;

fn unavailable(e: impl std::fmt::Display) -> LockError {
    LockError::Unavailable(e.to_string())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Locks for PgStore {
    async fn acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockLease>, LockError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let fence: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO locks (name, token, fence, expires_at)
             VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond')
             ON CONFLICT (name) DO UPDATE SET token = excluded.token, fence = locks.fence + 1,
                 expires_at = excluded.expires_at
             WHERE locks.expires_at <= clock_timestamp()
             RETURNING fence",
        )
        .bind(name)
        .bind(&token)
        .bind(millis(ttl) as f64)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(fence.map(|(fence,)| LockLease {
            name: name.to_owned(),
            token,
            fence: fence as u64,
        }))
    }

    async fn extend(&self, lease: &LockLease, ttl: Duration) -> Result<bool, LockError> {
        let r = sqlx::query(
            "UPDATE locks SET expires_at = clock_timestamp() + $1 * interval '1 millisecond'
             WHERE name = $2 AND token = $3 AND expires_at > clock_timestamp()",
        )
        .bind(millis(ttl) as f64)
        .bind(&lease.name)
        .bind(&lease.token)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(r.rows_affected() == 1)
    }

    async fn release(&self, lease: &LockLease) -> Result<bool, LockError> {
        let r = sqlx::query(
            "UPDATE locks SET expires_at = '-infinity'
             WHERE name = $1 AND token = $2 AND expires_at > clock_timestamp()",
        )
        .bind(&lease.name)
        .bind(&lease.token)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(r.rows_affected() == 1)
    }

    async fn ping(&self) -> Result<(), LockError> {
        idem_core::Store::ping(self).await.map_err(unavailable)
    }
}
