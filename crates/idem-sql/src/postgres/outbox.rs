//! The outbox for broker mode: which queued tasks still need a broker message, taken so that
//! concurrent dispatchers split them.
//!
//! Invariant: a queued task is handed out once per publish (`dispatched_at` set in the same
//! transaction, rows other dispatchers hold skipped), and again only when its message may have been
//! lost: unclaimed past the redelivery window, or its publish reported failed.

use chrono::{DateTime, Utc};
use idem_core::broker::Hint;
use idem_core::{StoreError, TaskId};
use sqlx::{PgConnection, PgPool};

use super::{rows, tasks};
use crate::db_err;

/// A taken task: id, queue, priority, run_at, traceparent.
type TakenRow = (String, String, i16, DateTime<Utc>, Option<String>);

/// The outbox step: marks up to `limit` queued tasks that need a broker message — never published,
/// or published before `redeliver_before` and still unclaimed — as published at `now`, after
/// promoting the due tasks of every queue. Rows another dispatcher holds are skipped, so
/// dispatchers split the work.
pub(super) async fn take_for_dispatch(
    tx: &mut PgConnection,
    now: DateTime<Utc>,
    limit: u32,
    redeliver_before: DateTime<Utc>,
    mark: DateTime<Utc>,
) -> Result<Vec<Hint>, StoreError> {
    tasks::promote(tx, None, now).await?;
    let rows: Vec<TakenRow> = sqlx::query_as(
        "UPDATE tasks SET dispatched_at = $1
         WHERE id IN (
             SELECT id FROM tasks
             WHERE state = 'queued' AND (dispatched_at IS NULL OR dispatched_at < $2)
             -- No ORDER BY: sorting every unpublished task per batch costs more than it buys;
             -- the broker orders deliveries by priority, and each batch is sorted below.
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
         RETURNING id, queue, priority, run_at, traceparent",
    )
    .bind(mark)
    .bind(redeliver_before)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    let mut rows = rows;
    // RETURNING has no order; publish in claim order.
    rows.sort_by(|a, b| b.2.cmp(&a.2).then(a.3.cmp(&b.3)).then(a.0.cmp(&b.0)));
    rows.into_iter()
        .map(|(id, queue, priority, _, traceparent)| {
            Ok(Hint {
                task_id: id.parse().map_err(|e| rows::corrupt("id", e))?,
                queue: queue.try_into().map_err(|e| rows::corrupt("queue", e))?,
                priority,
                traceparent,
            })
        })
        .collect()
}

/// Records the publish time of queued tasks that still carry the mark `taken` (compare-and-set:
/// a task taken again since keeps its newer mark).
pub(super) async fn mark_dispatched(
    tx: &mut PgConnection,
    ids: &[TaskId],
    taken: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    sqlx::query(
        "UPDATE tasks SET dispatched_at = $2
         WHERE state = 'queued' AND id = ANY($1) AND dispatched_at = $3",
    )
    .bind(ids)
    .bind(at)
    .bind(taken)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(super) async fn next_ready_at_any(pool: &PgPool) -> Result<Option<DateTime<Utc>>, StoreError> {
    let (at,): (Option<DateTime<Utc>>,) =
        sqlx::query_as("SELECT min(run_at) FROM tasks WHERE state IN ('scheduled', 'retrying')")
            .fetch_one(pool)
            .await
            .map_err(db_err)?;
    Ok(at)
}
