//! The store-backed `Locks` for SQLite (used when no Redis is configured): one lease row per name.
//!
//! Invariant: a row is never deleted, so its fencing counter only grows; acquiring takes an expired
//! (or released) row in one statement, so two acquirers never both succeed.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use idem_core::locks::{LockError, LockLease, Locks};

use super::{ms, SqliteStore};

fn unavailable(e: impl std::fmt::Display) -> LockError {
    LockError::Unavailable(e.to_string())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Locks for SqliteStore {
    async fn acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockLease>, LockError> {
        let now = ms(Utc::now());
        let token = uuid::Uuid::new_v4().simple().to_string();
        let fence: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO locks (name, token, fence, expires_at) VALUES (?1, ?2, 1, ?3 + ?4)
             ON CONFLICT (name) DO UPDATE SET token = excluded.token, fence = locks.fence + 1,
                 expires_at = excluded.expires_at
             WHERE locks.expires_at <= ?3
             RETURNING fence",
        )
        .bind(name)
        .bind(&token)
        .bind(now)
        .bind(millis(ttl))
        .fetch_optional(&mut **self.writer.lock().await.map_err(unavailable)?)
        .await
        .map_err(unavailable)?;
        Ok(fence.map(|(fence,)| LockLease {
            name: name.to_owned(),
            token,
            fence: fence as u64,
        }))
    }

    async fn extend(&self, lease: &LockLease, ttl: Duration) -> Result<bool, LockError> {
        let now = ms(Utc::now());
        let r = sqlx::query(
            "UPDATE locks SET expires_at = ?1 + ?2 WHERE name = ?3 AND token = ?4 AND expires_at > ?1",
        )
        .bind(now)
        .bind(millis(ttl))
        .bind(&lease.name)
        .bind(&lease.token)
        .execute(&mut **self.writer.lock().await.map_err(unavailable)?)
        .await
        .map_err(unavailable)?;
        Ok(r.rows_affected() == 1)
    }

    async fn release(&self, lease: &LockLease) -> Result<bool, LockError> {
        let now = ms(Utc::now());
        let r = sqlx::query(
            "UPDATE locks SET expires_at = 0 WHERE name = ?1 AND token = ?2 AND expires_at > ?3",
        )
        .bind(&lease.name)
        .bind(&lease.token)
        .bind(now)
        .execute(&mut **self.writer.lock().await.map_err(unavailable)?)
        .await
        .map_err(unavailable)?;
        Ok(r.rows_affected() == 1)
    }

    async fn ping(&self) -> Result<(), LockError> {
        idem_core::Store::ping(self).await.map_err(unavailable)
    }
}
