//! The worker's prefetch buffer: claims taken ahead of the free slots are held like running ones —
//! their leases are renewed while they wait, a cancel reaches them before they start, and each runs
//! exactly once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idem_core::worker::{Worker, WorkerConfig};
use idem_core::{QueueName, Registry, Store, TaskContext, TaskError, TaskState, WorkerId};
use idem_sql::SqliteStore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

type Runs = Arc<Mutex<HashMap<idem_core::TaskId, u32>>>;

/// `quick` counts its runs; `block` runs until `gate` is notified.
fn registry(runs: Runs, gate: Arc<Notify>) -> Arc<Registry> {
    let mut r = Registry::new();
    let counted = runs.clone();
    r.register("quick", move |ctx: TaskContext, _: serde_json::Value| {
        let runs = counted.clone();
        async move {
            *runs.lock().unwrap().entry(ctx.task_id).or_default() += 1;
            Ok::<_, TaskError>(serde_json::Value::Null)
        }
    });
    r.register("block", move |_: TaskContext, _: serde_json::Value| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok::<_, TaskError>(serde_json::Value::Null)
        }
    });
    Arc::new(r)
}

fn new_task(name: &str, priority: i16, now: chrono::DateTime<chrono::Utc>) -> idem_core::NewTask {
    let mut t = idem_testkit::fixtures::task(now);
    t.task = name.try_into().unwrap();
    t.priority = priority;
    t
}

async fn wait_for(store: &Arc<dyn Store>, id: idem_core::TaskId, state: TaskState) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = store.get_task(id).await.unwrap().unwrap();
        if t.state == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {state:?}: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetched_claims_are_renewed_cancellable_and_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("idem.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
    let runs: Runs = Arc::default();
    let gate = Arc::new(Notify::new());
    // A short lease: the blocked task holds the only slot for longer than 4/5 of it, so the
    // buffered claims survive only if their leases are renewed while they wait.
    let lease = Duration::from_millis(1500);
    let cfg = WorkerConfig {
        id: WorkerId("w".into()),
        host: "test".into(),
        queues: vec![QueueName::default_queue()],
        concurrency: 1,
        lease,
        shutdown_grace: Duration::from_secs(5),
        max_idle: Duration::from_millis(100),
        prefetch: 8,
    };
    let stop = CancellationToken::new();
    let worker = Worker::new(store.clone(), registry(runs.clone(), gate.clone()), cfg);
    let worker = tokio::spawn(worker.run(stop.clone()));

    // Short tasks first, so the worker has seen short attempts and prefetches.
    let now = store.now().await.unwrap();
    let warm = store
        .submit((0..20).map(|_| new_task("quick", 0, now)).collect(), now)
        .await
        .unwrap();
    for s in &warm {
        wait_for(&store, s.task.id, TaskState::Succeeded).await;
    }

    // The blocking task (highest priority, claimed first) and five quick ones in one batch: one
    // claim takes them all, the quick ones wait in the buffer behind the blocked slot.
    let now = store.now().await.unwrap();
    let mut batch = vec![new_task("block", 9, now)];
    batch.extend((0..5).map(|_| new_task("quick", 0, now)));
    let out = store.submit(batch, now).await.unwrap();
    let block = out[0].task.id;
    let quick: Vec<_> = out[1..].iter().map(|s| s.task.id).collect();
    wait_for(&store, block, TaskState::Running).await;
    for id in &quick {
        wait_for(&store, *id, TaskState::Running).await; // claimed: held in the buffer
    }
    let cancelled = quick[2];
    store.cancel_task(cancelled, now).await.unwrap();
    tokio::time::sleep(lease * 2).await;
    gate.notify_one();

    wait_for(&store, block, TaskState::Succeeded).await;
    for id in quick.iter().filter(|id| **id != cancelled) {
        wait_for(&store, *id, TaskState::Succeeded).await;
        let t = store.get_task(*id).await.unwrap().unwrap();
        assert_eq!(t.attempts, 1, "a buffered claim kept its lease: {t:?}");
    }
    assert_eq!(
        store.get_task(cancelled).await.unwrap().unwrap().state,
        TaskState::Cancelled
    );
    let runs = runs.lock().unwrap().clone();
    assert!(!runs.contains_key(&cancelled), "the cancelled task started");
    assert!(
        runs.values().all(|n| *n == 1),
        "every task ran once: {runs:?}"
    );
    assert_eq!(runs.len(), 20 + 4);
    stop.cancel();
    worker.await.unwrap();
}
