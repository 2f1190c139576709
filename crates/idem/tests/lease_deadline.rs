//! One attempt at a time: a worker cut off from its store stops its attempt before the lease can have
//! expired, and reports nothing; the next attempt (another worker, after the reaper) starts only
//! after the first has stopped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idem_core::maintenance::Maintenance;
use idem_core::worker::{Worker, WorkerConfig};
use idem_core::{QueueName, Registry, Store, TaskContext, TaskError, TaskState, WorkerId};
use idem_sql::SqliteStore;
use idem_testkit::faulty::{FaultyStore, Link};
use tokio_util::sync::CancellationToken;

/// What the handler saw of each attempt: its number, when it started and when its future ended.
#[derive(Debug, Clone)]
struct Span {
    attempt: i32,
    start: Instant,
    end: Option<Instant>,
}

type Spans = Arc<Mutex<Vec<Span>>>;

/// Records the end of an attempt when its future is dropped — however the worker stops it.
struct EndOnDrop(Spans, usize);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.lock().unwrap()[self.1].end = Some(Instant::now());
    }
}

/// `hold`: the first attempt runs until it is stopped; later attempts succeed at once.
fn registry(spans: Spans) -> Arc<Registry> {
    let mut r = Registry::new();
    r.register("hold", move |ctx: TaskContext, _: serde_json::Value| {
        let spans = spans.clone();
        async move {
            let index = {
                let mut s = spans.lock().unwrap();
                s.push(Span {
                    attempt: ctx.attempt,
                    start: Instant::now(),
                    end: None,
                });
                s.len() - 1
            };
            let _end = EndOnDrop(spans, index);
            if ctx.attempt == 1 {
                futures::future::pending::<()>().await;
            }
            Ok::<_, TaskError>(serde_json::Value::Null)
        }
    });
    Arc::new(r)
}

fn config(name: &str, lease: Duration) -> WorkerConfig {
    WorkerConfig {
        id: WorkerId(name.to_owned()),
        host: "test".into(),
        queues: vec![QueueName::default_queue()],
        concurrency: 1,
        lease,
        shutdown_grace: Duration::from_millis(100),
        max_idle: Duration::from_millis(100),
        prefetch: 32,
    }
}

async fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_cut_off_from_the_store_stops_its_attempt_before_the_next_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("idem.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
    let spans: Spans = Arc::default();
    let lease = Duration::from_secs(3);

    let mut task = idem_testkit::fixtures::task(store.now().await.unwrap());
    task.task = "hold".try_into().unwrap();
    let id = store
        .submit(vec![task], store.now().await.unwrap())
        .await
        .unwrap()[0]
        .task
        .id;

    // Worker A reaches the store through a link the test cuts once attempt 1 runs.
    let link = FaultyStore::new(store.clone());
    let stop_a = CancellationToken::new();
    let a = Worker::new(link.clone(), registry(spans.clone()), config("a", lease));
    let a = tokio::spawn(a.run(stop_a.clone()));
    eventually("attempt 1 to start", Duration::from_secs(30), || {
        (!spans.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    link.set(Link::BlackHole);

    // Worker B and the lease reaper talk to the store directly.
    let stop = CancellationToken::new();
    let b = Worker::new(store.clone(), registry(spans.clone()), config("b", lease));
    let b = tokio::spawn(b.run(stop.clone()));
    let reaper = Maintenance::new(store.clone(), Duration::from_millis(200));
    let reaper = tokio::spawn(reaper.run(stop.clone()));

    let second = eventually("attempt 2 to start", Duration::from_secs(60), || {
        spans.lock().unwrap().get(1).cloned()
    })
    .await;
    let first = spans.lock().unwrap()[0].clone();
    assert_eq!((first.attempt, second.attempt), (1, 2));
    let first_end = first
        .end
        .expect("attempt 1 was still running when attempt 2 started");
    assert!(first_end <= second.start, "{first:?} overlaps {second:?}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let t = store.get_task(id).await.unwrap().unwrap();
        if t.state == TaskState::Succeeded {
            break t;
        }
        assert!(Instant::now() < deadline, "the task did not succeed: {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done.attempts, 2, "attempt 1 reported nothing");

    stop.cancel();
    b.await.unwrap();
    reaper.await.unwrap();
    // A is still cut off; its shutdown would wait on the black hole.
    stop_a.cancel();
    a.abort();
}
