//! The outbox dispatcher against a real store (SQLite) and a broker that can be switched off: a
//! failed publish is retried after a short backoff — not at once (no spin while the broker is
//! down) and not only after the whole publish lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use idem_core::broker::{Broker, BrokerError, Consumer, Hint};
use idem_core::dispatcher::{Dispatcher, RETRY_AFTER_FAILURE};
use idem_core::{QueueName, Store};
use idem_sql::SqliteStore;

/// A broker whose publishes fail while `down` is set; it records what it confirmed.
#[derive(Default)]
struct SwitchBroker {
    down: AtomicBool,
    published: Mutex<Vec<Hint>>,
}

#[async_trait]
impl Broker for SwitchBroker {
    async fn publish(&self, hints: &[Hint]) -> Result<(), BrokerError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BrokerError::Unavailable("switched off".into()));
        }
        self.published.lock().unwrap().extend_from_slice(hints);
        Ok(())
    }
    async fn consume(&self, _: &[QueueName], _: u16) -> Result<Box<dyn Consumer>, BrokerError> {
        Err(BrokerError::Unavailable("not a consumer".into()))
    }
    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_publish_is_retried_after_a_short_backoff_without_spinning() {
    let dir = tempfile::tempdir().unwrap().keep();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&format!("sqlite://{}", dir.join("idem.db").display()))
            .await
            .unwrap(),
    );
    let broker = Arc::new(SwitchBroker::default());
    let dispatcher = Dispatcher::new(
        store.clone(),
        broker.clone(),
        Duration::from_secs(300),
        Duration::from_secs(1),
    );
    let now = store.now().await.unwrap();
    let task = idem_testkit::fixtures::task(now);
    let id = task.id;
    store.submit(vec![task], now).await.unwrap();

    broker.down.store(true, Ordering::SeqCst);
    assert!(dispatcher.run_once().await.is_err());
    let failed_at = Instant::now();
    // Right after the failure the task is not taken again: no spin.
    assert_eq!(dispatcher.run_once().await, Ok(0));

    broker.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if dispatcher.run_once().await.unwrap() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the task was never published again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = failed_at.elapsed();
    assert!(
        waited >= RETRY_AFTER_FAILURE - Duration::from_millis(100),
        "retried after {waited:?}"
    );
    let published = broker.published.lock().unwrap().clone();
    assert_eq!(
        published.iter().map(|h| h.task_id).collect::<Vec<_>>(),
        vec![id]
    );
    // Confirmed: not published again within the redelivery window.
    assert_eq!(dispatcher.run_once().await, Ok(0));
}
