//! Consuming: one channel per `consume` call with `basic_qos(prefetch)`, one manual-ack
//! `basic_consume` per queue, merged into one stream of `Delivery`s.
//!
//! Invariants:
//! - a delivery is settled only by its `Acker` (ack, or nack with requeue) — never on receipt — so a
//!   worker that dies mid-task leaves the message to be redelivered when its channel closes;
//! - at most `prefetch` deliveries handed out by `next()` are unsettled at once, whatever the number of
//!   queues (RabbitMQ's per-consumer prefetch bounds each queue; a semaphore bounds the sum);
//! - a body that is not an idem hint is acked and dropped with a warning, so it neither crashes nor
//!   loops;
//! - once the channel, the connection or one of the queue consumers ends, every later `next()`
//!   returns `Unavailable`: the caller consumes again.

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, SelectAll, StreamExt};
use idem_core::broker::{Acker, BrokerError, Consumer, Delivery};
use idem_core::ids::QueueName;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::connection::Session;
use crate::error::unavailable;
use crate::message;
use crate::topology::{amqp_queue, declare};

/// What one queue's consumer stream yields: deliveries, then its end.
// Each value is moved once from the stream to `next()`; boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Event {
    Delivery(lapin::Result<lapin::message::Delivery>),
    /// The broker cancelled the consumer (queue deleted) or its channel closed.
    Ended(String),
}

/// A stream of hints from some queues, on its own channel.
pub(crate) struct AmqpConsumer {
    /// Kept so the channel stays open while the consumer lives (each `AmqpAcker` also holds it).
    channel: Channel,
    /// The merged per-queue streams.
    deliveries: SelectAll<BoxStream<'static, Event>>,
    /// One permit per delivery that may be unsettled; each handed-out delivery holds one.
    permits: Arc<Semaphore>,
    /// Why the consumer stopped, once it has: every later `next()` repeats it.
    failed: Option<String>,
}

/// Opens a channel on `session` and consumes `queues` (named with `prefix`) on it.
pub(crate) async fn consume(
    session: &Session,
    prefix: &str,
    queues: &[QueueName],
    prefetch: u16,
) -> Result<AmqpConsumer, BrokerError> {
    if queues.is_empty() {
        return Err(BrokerError::Unavailable(
            "consume needs at least one queue".to_owned(),
        ));
    }
    // AMQP reads a prefetch of 0 as "unlimited"; the seam reads it as the limit, and a limit of 0
    // would deliver nothing, so it means 1.
    let prefetch = prefetch.max(1);
    let channel = session.channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| unavailable("setting the prefetch", e))?;

    let mut deliveries = SelectAll::new();
    for queue in queues {
        let name = amqp_queue(prefix, queue);
        declare(&channel, &name).await?;
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&format!("consuming {name}"), e))?;
        let ended = stream::once(async move { Event::Ended(name) });
        deliveries.push(consumer.map(Event::Delivery).chain(ended).boxed());
    }
    Ok(AmqpConsumer {
        channel,
        deliveries,
        permits: Arc::new(Semaphore::new(usize::from(prefetch))),
        failed: None,
    })
}

impl AmqpConsumer {
    fn fail(&mut self, why: String) -> BrokerError {
        self.failed = Some(why.clone());
        BrokerError::Unavailable(why)
    }
}

#[async_trait]
impl Consumer for AmqpConsumer {
    /// Cancel-safe: a delivery is taken from the stream only when it is returned (or, when malformed,
    /// acked), so dropping this future loses nothing.
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            if let Some(why) = &self.failed {
                return Err(BrokerError::Unavailable(why.clone()));
            }
            // The permit comes first: with `prefetch` deliveries unsettled, wait here for a settle.
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| BrokerError::Unavailable("consumer closed".to_owned()))?;
            let delivery = match self.deliveries.next().await {
                Some(Event::Delivery(Ok(d))) => d,
                Some(Event::Delivery(Err(e))) => {
                    return Err(self.fail(format!("consuming: {e}")));
                }
                Some(Event::Ended(queue)) => {
                    return Err(self.fail(format!("consumer of {queue} was cancelled")));
                }
                None => return Err(self.fail("all consumers ended".to_owned())),
            };
            match message::decode(&delivery.data, &delivery.properties) {
                Ok(hint) => {
                    return Ok(Delivery {
                        hint,
                        redelivered: delivery.redelivered,
                        acker: Box::new(AmqpAcker {
                            acker: delivery.acker,
                            _channel: self.channel.clone(),
                            _permit: permit,
                        }),
                    });
                }
                Err(e) => {
                    tracing::warn!(
                        queue = %delivery.routing_key,
                        error = %e,
                        "dropping an AMQP message that is not an idem hint"
                    );
                    settled(
                        "acking a malformed message",
                        delivery.acker.ack(BasicAckOptions::default()).await,
                    )?;
                }
            }
        }
    }
}

/// Settles one delivery on the channel it came from.
struct AmqpAcker {
    acker: lapin::Acker,
    /// Keeps the channel open until the delivery is settled, even if the consumer is dropped first
    /// (a worker that stops consuming can still ack the tasks it finishes).
    _channel: Channel,
    /// Frees a prefetch slot when the delivery is settled or dropped.
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        crate::bounded("ack", async {
            settled("ack", self.acker.ack(BasicAckOptions::default()).await)
        })
        .await
    }

    async fn requeue(self: Box<Self>) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        crate::bounded("requeue", async {
            settled("requeue", self.acker.nack(options).await)
        })
        .await
    }
}

/// lapin answers `Ok(false)` when the channel closed before the settle could be sent: RabbitMQ then
/// redelivers the message, and the caller must know its settle did not happen.
fn settled(step: &str, r: lapin::Result<bool>) -> Result<(), BrokerError> {
    match r {
        Ok(true) => Ok(()),
        Ok(false) => Err(BrokerError::Unavailable(format!(
            "{step}: the channel closed first; the message will be redelivered"
        ))),
        Err(e) => Err(unavailable(step, e)),
    }
}
