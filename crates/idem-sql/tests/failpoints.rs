//! The two gaps where a process can die between a commit and telling the broker: after the broker
//! confirmed a publish but before the store recorded it, and after an attempt's outcome was committed
//! but before its message was acknowledged. Both must cost at most a duplicate message, which the
//! worker's claim drops: never a lost task, never a second execution.
//!
//! Failpoints are process-global, so the cases run one after another in one test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::dispatcher::{Dispatcher, PUBLISH_LEASE};
use idem_core::worker::{Worker, WorkerConfig};
use idem_core::{QueueName, Registry, Store, TaskContext, TaskError, TaskState, WorkerId};
use idem_sql::SqliteStore;
use idem_testkit::fixtures::{secs, task};
use idem_testkit::memory_broker::MemoryBroker;
use tokio_util::sync::CancellationToken;

async fn store() -> Arc<dyn Store> {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("idem.db").display());
    Arc::new(SqliteStore::open(&url).await.unwrap())
}

fn counting(runs: Arc<AtomicUsize>) -> Arc<Registry> {
    let mut r = Registry::new();
    r.register("count", move |_: TaskContext, _: serde_json::Value| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, TaskError>(serde_json::Value::Null)
        }
    });
    Arc::new(r)
}

fn worker_config(name: &str) -> WorkerConfig {
    WorkerConfig {
        id: WorkerId(name.into()),
        host: "test".into(),
        queues: vec![QueueName::default_queue()],
        concurrency: 4,
        lease: Duration::from_secs(30),
        shutdown_grace: Duration::from_millis(200),
        max_idle: Duration::from_millis(100),
        prefetch: 0,
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_death_in_either_gap_costs_a_duplicate_message_never_a_task_or_a_second_run() {
    let scenario = fail::FailScenario::setup();

    // --- publish -> confirm recorded ---------------------------------------------------------
    let store = store().await;
    let broker = MemoryBroker::new();
    let now = store.now().await.unwrap();
    let mut t = task(now);
    t.task = "count".try_into().unwrap();
    let id = store.submit(vec![t], now).await.unwrap()[0].task.id;
    let dispatcher = Dispatcher::new(
        store.clone(),
        Arc::new(broker.clone()),
        Duration::from_secs(300),
        Duration::from_secs(1),
    );
    fail::cfg("dispatcher::after_confirm", "return").unwrap();
    assert_eq!(dispatcher.run_once().await.unwrap(), 1);
    fail::remove("dispatcher::after_confirm");
    assert_eq!(broker.published(), 1);
    // The confirm was never recorded: the task is taken again once the publish lease is over (and
    // not before), so its message cannot be lost — a duplicate at worst.
    let lease = chrono::Duration::from_std(PUBLISH_LEASE).unwrap();
    let window = secs(300.0);
    let soon = now + secs(1.0);
    assert!(store
        .take_for_dispatch(soon, 10, soon - window, soon - window + lease)
        .await
        .unwrap()
        .is_empty());
    let later = now + lease + secs(1.0);
    let again = store
        .take_for_dispatch(later, 10, later - window, later - window + lease)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].task_id, id);
    // The duplicate message is published; one worker runs the task once and drops the other hint.
    use idem_core::broker::Broker;
    broker.publish(&again).await.unwrap();
    assert_eq!(broker.outstanding(), 2);
    let runs = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let w = Worker::new(store.clone(), counting(runs.clone()), worker_config("w1"))
        .with_broker(Arc::new(broker.clone()));
    let w = tokio::spawn(w.run(stop.clone()));
    until("both messages settled", || broker.outstanding() == 0).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the duplicate was dropped");
    assert_eq!(
        store.get_task(id).await.unwrap().unwrap().state,
        TaskState::Succeeded
    );
    stop.cancel();
    w.await.unwrap();

    // --- outcome committed -> message acknowledged -------------------------------------------
    let store = store_with_one_message(&broker).await;
    let (store, id) = store;
    let runs = Arc::new(AtomicUsize::new(0));
    fail::cfg("worker::after_commit", "return").unwrap();
    let stop = CancellationToken::new();
    let w = Worker::new(store.clone(), counting(runs.clone()), worker_config("w2"))
        .with_broker(Arc::new(broker.clone()));
    let w = tokio::spawn(w.run(stop.clone()));
    until("the outcome to be committed", || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.get_task(id).await.unwrap().unwrap().state != TaskState::Succeeded {
        assert!(Instant::now() < deadline, "the outcome was not committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    w.await.unwrap();
    fail::remove("worker::after_commit");
    // The worker "died" before its ack: the message comes back to another worker, whose claim finds
    // the task finished and drops it.
    assert_eq!(broker.outstanding(), 1, "the message was not acknowledged");
    broker.lose_consumers();
    let stop = CancellationToken::new();
    let w = Worker::new(store.clone(), counting(runs.clone()), worker_config("w3"))
        .with_broker(Arc::new(broker.clone()));
    let w = tokio::spawn(w.run(stop.clone()));
    until("the redelivery to be settled", || broker.outstanding() == 0).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the task ran once");
    stop.cancel();
    w.await.unwrap();

    scenario.teardown();
}

/// A fresh store with one `count` task whose message is in `broker`.
async fn store_with_one_message(broker: &MemoryBroker) -> (Arc<dyn Store>, idem_core::TaskId) {
    use idem_core::broker::{Broker, Hint};
    let store = store().await;
    let now = store.now().await.unwrap();
    let mut t = task(now);
    t.task = "count".try_into().unwrap();
    let id = store.submit(vec![t], now).await.unwrap()[0].task.id;
    broker
        .publish(&[Hint {
            task_id: id,
            queue: QueueName::default_queue(),
            priority: 0,
            traceparent: None,
        }])
        .await
        .unwrap();
    (store, id)
}
