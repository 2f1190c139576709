//! The store and locks conformance suites on PostgreSQL, a fresh schema per test, and what only a
//! shared database has: concurrent migrations, wake-ups between processes, the database's clock.
//!
//! Runs against `IDEM_TEST_PG_URL` (default: the local server's `test` database); skipped when it
//! is unreachable, unless `IDEM_TEST_REQUIRE_SERVICES=1`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use idem_core::store::ClaimRequest;
use idem_core::{ErrorInfo, Finish, QueueName, Store, StoreError, WorkerId};
use idem_sql::{PgOptions, PgStore};
use idem_testkit::fixtures::{keyed, secs, t0, task};
use idem_testkit::services::{or_skip, service_url, unique_name};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::sync::{watch, Barrier};

fn url() -> String {
    service_url(
        "IDEM_TEST_PG_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

fn in_schema(schema: &str) -> PgOptions {
    PgOptions {
        schema: Some(schema.to_owned()),
        ..PgOptions::default()
    }
}

/// A plain connection to the test database, or `None` (the test is skipped) when it is unreachable.
async fn reachable() -> Option<PgConnection> {
    or_skip("PostgreSQL", PgConnection::connect(&url()).await)
}

/// A migrated store in `schema`.
async fn open(schema: &str) -> PgStore {
    PgStore::open_with(&url(), in_schema(schema))
        .await
        .unwrap_or_else(|e| panic!("{}", chain(&e)))
}

/// An error with its sources, since `StoreError`'s message leaves them out.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn fresh() -> Option<Arc<dyn Store>> {
    reachable().await?;
    Some(Arc::new(open(&unique_name("t")).await))
}

idem_testkit::store_conformance_tests!(|| fresh());

/// The locks conformance suite on the store's lease rows, a fresh schema per test.
mod locks {
    use std::sync::Arc;

    use idem_core::locks::Locks;

    async fn fresh() -> Option<Arc<dyn Locks>> {
        super::reachable().await?;
        Some(Arc::new(
            super::open(&idem_testkit::services::unique_name("t")).await,
        ))
    }

    idem_testkit::locks_conformance_tests!(|| fresh());
}

/// Waits until `rx` sees a change, failing after `within`.
async fn changes<T>(rx: &mut watch::Receiver<T>, within: Duration, what: &str) {
    tokio::time::timeout(within, rx.changed())
        .await
        .unwrap_or_else(|_| panic!("no {what} wake-up within {within:?}"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_run_concurrently_from_many_processes() {
    let Some(mut db) = reachable().await else {
        return;
    };
    let schema = unique_name("t");
    let barrier = Arc::new(Barrier::new(4));
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let (schema, barrier) = (schema.clone(), barrier.clone());
            tokio::spawn(async move {
                // Four processes start at once: each creates the schema, then migrates it.
                let store = PgStore::connect(&url(), in_schema(&schema)).await?;
                barrier.wait().await;
                store.migrate().await?;
                Ok::<_, StoreError>(store)
            })
        })
        .collect();
    let mut stores = Vec::new();
    for s in starts {
        stores.push(s.await.unwrap().unwrap_or_else(|e| panic!("{}", chain(&e))));
    }
    let (applied,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'tasks'",
    )
    .bind(&schema)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(applied, 1);
    let now = t0();
    let out = stores[0].submit(vec![task(now)], now).await.unwrap();
    let seen = stores[3].get_task(out[0].task.id).await.unwrap();
    assert_eq!(seen, Some(out[0].task.clone()), "all four share one schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_in_one_process_wakes_another() {
    if reachable().await.is_none() {
        return;
    }
    let schema = unique_name("t");
    let (a, b) = (open(&schema).await, open(&schema).await);
    // Another schema in the same database must not hear it.
    let other = open(&unique_name("t")).await;
    let mut tasks = b.wakeups().subscribe_tasks();
    let mut jobs = b.wakeups().subscribe_jobs();
    let mut finished = b.wakeups().subscribe_finished();
    let mut cancels = b.wakeups().subscribe_cancels();
    let unrelated = other.wakeups().subscribe_tasks();

    let now = t0();
    a.submit(vec![task(now), task(now)], now).await.unwrap();
    changes(&mut tasks, Duration::from_secs(5), "tasks").await;

    a.create_job(idem_testkit::fixtures::interval_job("j", 10.0, now), false)
        .await
        .unwrap();
    changes(&mut jobs, Duration::from_secs(5), "jobs").await;

    let claims = a
        .claim(&ClaimRequest {
            worker: WorkerId("a".into()),
            queues: vec![QueueName::default_queue()],
            limit: 2,
            now,
            lease_until: now + secs(30.0),
        })
        .await
        .unwrap();
    assert_eq!(claims.len(), 2);
    let lease = |i: usize| idem_core::store::Lease {
        task_id: claims[i].task.id,
        attempt: claims[i].task.attempts,
    };
    a.finish(lease(0), Finish::Failed(ErrorInfo::new("error", "x")), now)
        .await
        .unwrap();
    changes(&mut finished, Duration::from_secs(5), "finished").await;

    a.cancel_task(lease(1).task_id, now).await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_secs(5), cancels.recv())
        .await
        .expect("no cancel wake-up within 5 s")
        .unwrap();
    assert_eq!(cancelled, lease(1).task_id);

    assert!(
        !unrelated.has_changed().unwrap(),
        "a store in another schema was woken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_listener_reconnects_and_wakes_everything_once_back() {
    let Some(mut db) = reachable().await else {
        return;
    };
    let schema = unique_name("t");
    let (a, b) = (open(&schema).await, open(&schema).await);
    let mut tasks = b.wakeups().subscribe_tasks();
    let mut jobs = b.wakeups().subscribe_jobs();

    // Kill both stores' listener connections, as a failover or an idle reaper would.
    let (killed,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE query LIKE 'LISTEN%' AND query LIKE '%' || $1 || '_idem_jobs%') AS t",
    )
    .bind(&schema)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(killed, 2);

    // Notifications may have been lost meanwhile, so every loop is woken once it is back.
    changes(&mut jobs, Duration::from_secs(10), "jobs (after reconnect)").await;
    changes(
        &mut tasks,
        Duration::from_secs(10),
        "tasks (after reconnect)",
    )
    .await;

    // And it LISTENs again.
    let now = t0();
    a.submit(vec![task(now)], now).await.unwrap();
    changes(&mut tasks, Duration::from_secs(5), "tasks").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn now_follows_the_database_clock() {
    let Some(mut db) = reachable().await else {
        return;
    };
    let store = open(&unique_name("t")).await;
    for _ in 0..3 {
        let ours = store.now().await.unwrap();
        let (theirs,): (DateTime<Utc>,) = sqlx::query_as("SELECT clock_timestamp()")
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(ours.timestamp_subsec_nanos() % 1_000_000, 0, "milliseconds");
        let skew = (theirs - ours).num_milliseconds().abs();
        assert!(skew < 500, "store clock {ours} vs database {theirs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_postgres_cannot_hold_are_stored_not_refused() {
    if reachable().await.is_none() {
        return;
    }
    let store = open(&unique_name("t")).await;
    let now = t0();
    let mut t = task(now);
    t.args = json!({"nul\u{0}key": ["a\u{0}b", 1.5, null, {"deep": "\u{0}"}]});
    let out = store.submit(vec![t], now).await.unwrap();
    assert_eq!(
        out[0].task.args,
        json!({"nul\u{FFFD}key": ["a\u{FFFD}b", 1.5, null, {"deep": "\u{FFFD}"}]})
    );
    let c = store
        .claim(&ClaimRequest {
            worker: WorkerId("w".into()),
            queues: vec![QueueName::default_queue()],
            limit: 1,
            now,
            lease_until: now + secs(30.0),
        })
        .await
        .unwrap()
        .remove(0);
    let lease = idem_core::store::Lease {
        task_id: c.task.id,
        attempt: c.task.attempts,
    };
    let done = store
        .finish(
            lease,
            Finish::Failed(ErrorInfo::new("error", "stderr: \u{0}")),
            now,
        )
        .await
        .unwrap();
    assert_eq!(done.error.unwrap().message, "stderr: \u{FFFD}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_sharing_keys_in_opposite_orders_both_succeed() {
    if reachable().await.is_none() {
        return;
    }
    let store = Arc::new(open(&unique_name("t")).await);
    let now = t0();
    for round in 0..3 {
        let (k1, k2) = (format!("r{round}-a"), format!("r{round}-b"));
        let barrier = Arc::new(Barrier::new(2));
        let orders = [[k1.clone(), k2.clone()], [k2, k1]];
        let handles: Vec<_> = orders
            .into_iter()
            .map(|keys| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    let batch = keys.iter().map(|k| keyed(task(now), k, 3600.0)).collect();
                    barrier.wait().await;
                    // Each may wait for the other's first key: a deadlock Postgres breaks by
                    // aborting one, which the store runs again.
                    let out = store.submit(batch, now).await.unwrap();
                    let mut ids: Vec<_> = out.iter().map(|s| s.task.id).collect();
                    ids.sort();
                    ids
                })
            })
            .collect();
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap());
        }
        assert_eq!(results[0], results[1], "one task per key");
    }
}
