//! Worker heartbeats and the queue-depth counts: what `GET /api/v1/workers` and the metrics read.

use idem_core::store::QueueDepth;
use idem_core::{StoreError, WorkerId, WorkerInfo};
use sqlx::PgPool;

use super::{queue_list, rows};
use crate::db_err;

/// Records a worker's heartbeat; its first one also records who it is.
pub(super) async fn heartbeat(pool: &PgPool, info: &WorkerInfo) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO workers (id, host, queues, concurrency, running, started_at,
             last_heartbeat_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE SET running = excluded.running,
             last_heartbeat_at = excluded.last_heartbeat_at",
    )
    .bind(rows::text(&info.id.0))
    .bind(rows::text(&info.host))
    .bind(queue_list(&info.queues))
    .bind(i64::from(info.concurrency))
    .bind(i64::from(info.running))
    .bind(info.started_at)
    .bind(info.last_heartbeat_at)
    .execute(pool)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(super) async fn remove(pool: &PgPool, id: &WorkerId) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM workers WHERE id = $1")
        .bind(rows::text(&id.0))
        .execute(pool)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub(super) async fn list(pool: &PgPool) -> Result<Vec<WorkerInfo>, StoreError> {
    let rows = sqlx::query("SELECT * FROM workers ORDER BY id")
        .fetch_all(pool)
        .await
        .map_err(db_err)?;
    rows.iter().map(rows::worker).collect()
}

/// Task counts by queue and unfinished state.
pub(super) async fn queue_depths(pool: &PgPool) -> Result<Vec<QueueDepth>, StoreError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT queue, state, count(*) FROM tasks
         WHERE state IN ('scheduled', 'queued', 'running', 'retrying')
         GROUP BY queue, state",
    )
    .fetch_all(pool)
    .await
    .map_err(db_err)?;
    rows.into_iter()
        .map(|(q, s, count)| {
            Ok(QueueDepth {
                queue: q.try_into().map_err(|e| rows::corrupt("queue", e))?,
                state: s.parse().map_err(|e| rows::corrupt("state", e))?,
                count,
            })
        })
        .collect()
}
