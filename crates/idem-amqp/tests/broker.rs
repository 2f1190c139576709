//! `AmqpBroker` against a real RabbitMQ (`IDEM_TEST_AMQP_URL`, default the local guest account).
//! Each test uses its own queue prefix, so tests never see each other's messages; a test skips when
//! RabbitMQ is unreachable (and fails when `IDEM_TEST_REQUIRE_SERVICES=1`).

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use idem_amqp::{AmqpBroker, AmqpOptions};
use idem_core::broker::{Broker, BrokerError, Consumer, Delivery, Hint};
use idem_core::ids::{QueueName, TaskId};
use idem_testkit::services::{or_skip, service_url, unique_name};
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// How long any one expected event may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long a delivery that must not happen is waited for.
const QUIET: Duration = Duration::from_millis(300);

fn url() -> String {
    service_url(
        "IDEM_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

/// A test's broker and the queues it used, deleted at the end.
struct Fixture {
    broker: AmqpBroker,
    prefix: String,
}

impl Fixture {
    async fn start() -> Option<Self> {
        let prefix = format!("{}.", unique_name("t"));
        let broker = or_skip("RabbitMQ", connect(&prefix).await)?;
        Some(Self { broker, prefix })
    }

    async fn reconnect(&self) -> AmqpBroker {
        connect(&self.prefix).await.expect("reconnect")
    }

    /// Deletes this test's queues (tidiness only: the unique prefix is the isolation).
    async fn cleanup(self, queues: &[QueueName]) {
        let names: Vec<String> = queues.iter().map(|q| self.broker.amqp_queue(q)).collect();
        drop(self.broker);
        let conn = raw_connection().await;
        let channel = conn.create_channel().await.expect("channel");
        for name in names {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "done".into()).await;
    }
}

async fn connect(prefix: &str) -> Result<AmqpBroker, BrokerError> {
    AmqpBroker::connect(
        &url(),
        AmqpOptions {
            queue_prefix: prefix.to_owned(),
        },
    )
    .await
}

async fn raw_connection() -> Connection {
    Connection::connect(&url(), ConnectionProperties::default())
        .await
        .expect("raw AMQP connection")
}

fn queue(name: &str) -> QueueName {
    QueueName::try_from(name).unwrap()
}

fn hint(q: &QueueName, priority: i16) -> Hint {
    Hint {
        task_id: TaskId::generate(),
        queue: q.clone(),
        priority,
        traceparent: None,
    }
}

/// `fut`, or a failure naming `what` after `DEADLINE`.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {DEADLINE:?}"))
}

async fn next(consumer: &mut Box<dyn Consumer>) -> Delivery {
    within("next delivery", consumer.next())
        .await
        .expect("next delivery")
}

/// Asserts that no delivery arrives within `QUIET`.
async fn assert_quiet(consumer: &mut Box<dyn Consumer>) {
    if let Ok(r) = tokio::time::timeout(QUIET, consumer.next()).await {
        panic!(
            "expected no delivery, got {:?}",
            r.map(|d| (d.hint, d.redelivered))
        );
    }
}

#[tokio::test]
async fn published_hints_are_delivered_with_their_task_ids() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let (a, b) = (queue("alpha"), queue("beta"));
    let hints = vec![hint(&a, 0), hint(&b, 4), hint(&a, 9)];
    fx.broker.publish(&hints).await.expect("publish");

    let mut consumer = fx
        .broker
        .consume(&[a.clone(), b.clone()], 10)
        .await
        .expect("consume");
    let mut got = Vec::new();
    for _ in 0..hints.len() {
        let d = next(&mut consumer).await;
        assert!(!d.redelivered);
        got.push(d.hint.clone());
        d.acker.ack().await.expect("ack");
    }
    let key = |h: &Hint| h.task_id;
    got.sort_by_key(key);
    let mut want = hints.clone();
    want.sort_by_key(key);
    assert_eq!(got, want);
    assert_quiet(&mut consumer).await;

    drop(consumer);
    fx.cleanup(&[a, b]).await;
}

#[tokio::test]
async fn unacked_deliveries_are_redelivered_after_the_consumer_is_dropped() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("default");
    let h = hint(&q, 1);
    fx.broker.publish(std::slice::from_ref(&h)).await.unwrap();

    let mut first = fx
        .broker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .unwrap();
    let d = next(&mut first).await;
    assert_eq!((d.hint.task_id, d.redelivered), (h.task_id, false));
    drop(d);
    drop(first);

    let mut second = fx
        .broker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .unwrap();
    let again = next(&mut second).await;
    assert_eq!((again.hint.task_id, again.redelivered), (h.task_id, true));
    again.acker.ack().await.unwrap();

    drop(second);
    fx.cleanup(&[q]).await;
}

#[tokio::test]
async fn acked_deliveries_are_not_redelivered() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("default");
    let (acked, unacked) = (hint(&q, 1), hint(&q, 1));
    fx.broker
        .publish(&[acked.clone(), unacked.clone()])
        .await
        .unwrap();

    let mut first = fx
        .broker
        .consume(std::slice::from_ref(&q), 2)
        .await
        .unwrap();
    let d1 = next(&mut first).await;
    let d2 = next(&mut first).await;
    assert_eq!(
        (d1.hint.task_id, d2.hint.task_id),
        (acked.task_id, unacked.task_id)
    );
    d1.acker.ack().await.unwrap();
    drop(d2);
    drop(first);

    let mut second = fx
        .broker
        .consume(std::slice::from_ref(&q), 2)
        .await
        .unwrap();
    let again = next(&mut second).await;
    assert_eq!(
        (again.hint.task_id, again.redelivered),
        (unacked.task_id, true)
    );
    again.acker.ack().await.unwrap();
    assert_quiet(&mut second).await;

    drop(second);
    fx.cleanup(&[q]).await;
}

#[tokio::test]
async fn a_requeued_delivery_is_delivered_again() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("default");
    let h = hint(&q, 5);
    fx.broker.publish(std::slice::from_ref(&h)).await.unwrap();

    let mut consumer = fx
        .broker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.hint, h);
    d.acker.requeue().await.expect("requeue");

    let again = next(&mut consumer).await;
    assert_eq!((again.hint.clone(), again.redelivered), (h, true));
    again.acker.ack().await.unwrap();
    assert_quiet(&mut consumer).await;

    drop(consumer);
    fx.cleanup(&[q]).await;
}

#[tokio::test]
async fn higher_priority_is_delivered_first_when_both_wait_in_the_queue() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("default");
    let (low, mid, high) = (hint(&q, 0), hint(&q, 5), hint(&q, 9));
    // Confirmed before the consumer exists, so all three wait in the queue together.
    fx.broker
        .publish(&[low.clone(), mid.clone(), high.clone()])
        .await
        .unwrap();

    let mut consumer = fx
        .broker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        let d = next(&mut consumer).await;
        order.push(d.hint.task_id);
        d.acker.ack().await.unwrap();
    }
    assert_eq!(order, [high.task_id, mid.task_id, low.task_id]);

    drop(consumer);
    fx.cleanup(&[q]).await;
}

#[tokio::test]
async fn prefetch_limits_unsettled_deliveries() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("default");
    let hints: Vec<Hint> = (0..5).map(|_| hint(&q, 0)).collect();
    fx.broker.publish(&hints).await.unwrap();

    let mut consumer = fx
        .broker
        .consume(std::slice::from_ref(&q), 2)
        .await
        .unwrap();
    let first = next(&mut consumer).await;
    let _second = next(&mut consumer).await;
    assert!(
        tokio::time::timeout(QUIET, consumer.next()).await.is_err(),
        "a third delivery arrived with two unsettled and prefetch 2"
    );
    first.acker.ack().await.unwrap();
    let third = next(&mut consumer).await;
    assert!(hints.iter().any(|h| h.task_id == third.hint.task_id));

    drop((third, _second, consumer));
    fx.cleanup(&[q]).await;
}

#[tokio::test]
async fn a_malformed_message_is_dropped_and_the_next_good_one_is_delivered() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("default");
    // Consuming first declares the queue, so the raw publish below is routed.
    let mut consumer = fx
        .broker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .unwrap();

    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            fx.broker.amqp_queue(&q).as_str().into(),
            BasicPublishOptions::default(),
            b"this is not a hint",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let good = hint(&q, 0);
    fx.broker
        .publish(std::slice::from_ref(&good))
        .await
        .unwrap();

    let d = next(&mut consumer).await;
    assert_eq!(d.hint, good);
    d.acker.ack().await.unwrap();
    assert_quiet(&mut consumer).await;

    // Had the malformed message been left unacked, closing the channel would requeue it.
    drop(consumer);
    let mut again = fx
        .broker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .unwrap();
    assert_quiet(&mut again).await;

    drop(again);
    let _ = conn.close(200, "done".into()).await;
    fx.cleanup(&[q]).await;
}

#[tokio::test]
async fn five_thousand_hints_published_in_one_call_are_all_confirmed_and_consumed() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("bulk");
    let hints: Vec<Hint> = (0..5_000).map(|i| hint(&q, (i % 10) as i16)).collect();

    let started = Instant::now();
    within("publishing 5000 hints", fx.broker.publish(&hints))
        .await
        .expect("publish");
    let took = started.elapsed();
    eprintln!(
        "published and confirmed {} hints in {:?} ({:.0} hints/s)",
        hints.len(),
        took,
        hints.len() as f64 / took.as_secs_f64()
    );

    let mut consumer = fx
        .broker
        .consume(std::slice::from_ref(&q), 500)
        .await
        .unwrap();
    let mut seen = HashSet::new();
    let started = Instant::now();
    while seen.len() < hints.len() {
        let d = next(&mut consumer).await;
        seen.insert(d.hint.task_id);
        d.acker.ack().await.unwrap();
    }
    eprintln!("consumed and acked them in {:?}", started.elapsed());
    let want: HashSet<TaskId> = hints.iter().map(|h| h.task_id).collect();
    assert_eq!(seen, want);

    drop(consumer);
    fx.cleanup(&[q]).await;
}

#[tokio::test]
async fn messages_survive_a_reconnect() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("default");
    let hints: Vec<Hint> = (0..3).map(|_| hint(&q, 3)).collect();
    fx.broker.publish(&hints).await.unwrap();

    let other = fx.reconnect().await;
    let Fixture { broker, prefix } = fx;
    drop(broker);

    let mut consumer = other.consume(std::slice::from_ref(&q), 10).await.unwrap();
    let mut got = HashSet::new();
    for _ in 0..hints.len() {
        let d = next(&mut consumer).await;
        assert!(!d.redelivered);
        got.insert(d.hint.task_id);
        d.acker.ack().await.unwrap();
    }
    assert_eq!(got, hints.iter().map(|h| h.task_id).collect());

    drop(consumer);
    Fixture {
        broker: other,
        prefix,
    }
    .cleanup(&[q])
    .await;
}

#[tokio::test]
async fn a_broker_whose_connection_closed_reconnects_on_the_next_publish() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("default");
    fx.broker.publish(&[hint(&q, 0)]).await.unwrap();
    fx.broker.close_connection_for_tests().await;

    let h = hint(&q, 0);
    within(
        "publish after close",
        fx.broker.publish(std::slice::from_ref(&h)),
    )
    .await
    .expect("the publish reconnects");
    fx.broker.ping().await.expect("ping after reconnect");

    let mut consumer = fx
        .broker
        .consume(std::slice::from_ref(&q), 10)
        .await
        .unwrap();
    let mut got = HashSet::new();
    for _ in 0..2 {
        let d = next(&mut consumer).await;
        got.insert(d.hint.task_id);
        d.acker.ack().await.unwrap();
    }
    assert!(got.contains(&h.task_id));

    drop(consumer);
    fx.cleanup(&[q]).await;
}

#[tokio::test]
async fn a_consumer_whose_connection_closed_reports_unavailable_and_ping_reconnects() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("default");
    let mut consumer = fx
        .broker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .unwrap();
    fx.broker.close_connection_for_tests().await;

    let err = within("next after close", consumer.next())
        .await
        .err()
        .expect("next fails once the connection is gone");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err}");
    // Once failed, it stays failed: the caller consumes again.
    assert!(matches!(
        within("next again", consumer.next()).await,
        Err(BrokerError::Unavailable(_))
    ));

    within("ping", fx.broker.ping())
        .await
        .expect("ping reconnects");
    let mut again = fx
        .broker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .unwrap();
    let h = hint(&q, 0);
    fx.broker.publish(std::slice::from_ref(&h)).await.unwrap();
    let d = next(&mut again).await;
    assert_eq!(d.hint, h);
    d.acker.ack().await.unwrap();

    drop((consumer, again));
    fx.cleanup(&[q]).await;
}

#[tokio::test]
async fn a_publish_to_a_queue_deleted_behind_its_back_is_not_confirmed_then_redeclared() {
    let Some(fx) = Fixture::start().await else {
        return;
    };
    let q = queue("default");
    fx.broker.publish(&[hint(&q, 0)]).await.unwrap();

    let conn = raw_connection().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete(
            fx.broker.amqp_queue(&q).as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;

    let err = fx.broker.publish(&[hint(&q, 0)]).await.unwrap_err();
    assert!(matches!(err, BrokerError::NotConfirmed(_)), "{err}");

    let h = hint(&q, 0);
    fx.broker
        .publish(std::slice::from_ref(&h))
        .await
        .expect("the next publish declares the queue again");
    let mut consumer = fx
        .broker
        .consume(std::slice::from_ref(&q), 1)
        .await
        .unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.hint, h);
    d.acker.ack().await.unwrap();

    drop(consumer);
    fx.cleanup(&[q]).await;
}
