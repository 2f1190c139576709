//! The RabbitMQ `Broker`: each idem queue is one durable AMQP queue with priorities 0..=9, hints are
//! persistent JSON messages published with confirms, and consumers settle with manual acks.
//!
//! Invariants (from the `Broker` seam): `publish` returns only when RabbitMQ has confirmed every hint;
//! a delivery is acked only when its `Acker` says so, so an unsettled one is redelivered when its
//! channel closes; one connection is shared by all calls and re-established lazily, with backoff,
//! when it is lost.
//!
//! ```no_run
//! # async fn demo() -> Result<(), idem_core::broker::BrokerError> {
//! use idem_amqp::{AmqpBroker, AmqpOptions};
//! let broker = AmqpBroker::connect("amqp://guest:guest@127.0.0.1:5672/%2f", AmqpOptions::default()).await?;
//! # Ok(()) }
//! ```

mod backoff;
mod connection;
mod consumer;
mod error;
mod message;
mod publisher;
mod topology;

use std::time::Duration;

use async_trait::async_trait;
use idem_core::broker::{Broker, BrokerError, Consumer, Hint};
use idem_core::ids::QueueName;

use crate::connection::Link;

/// How idem's queues map onto RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpOptions {
    /// Prepended to an idem queue's name to name its AMQP queue: queue `Q` is `{queue_prefix}{Q}`.
    /// Lets several idem deployments (or tests) share a vhost.
    pub queue_prefix: String,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            queue_prefix: "idem.".to_owned(),
        }
    }
}

/// A `Broker` on RabbitMQ (AMQP 0-9-1).
pub struct AmqpBroker {
    /// The shared connection, reconnected on demand.
    link: Link,
    opts: AmqpOptions,
}

impl AmqpBroker {
    /// Connects to the AMQP URL (`amqp://user:pass@host:5672/%2f`, or `amqps://`); fails if RabbitMQ
    /// does not answer now. Later losses are repaired by the next call.
    pub async fn connect(url: &str, opts: AmqpOptions) -> Result<Self, BrokerError> {
        Ok(Self {
            link: Link::connect(url).await?,
            opts,
        })
    }

    /// The AMQP queue that carries idem queue `queue`.
    pub fn amqp_queue(&self, queue: &QueueName) -> String {
        topology::amqp_queue(&self.opts.queue_prefix, queue)
    }

    /// Closes the shared connection as if RabbitMQ had dropped it (consumers on it end with
    /// `Unavailable`); the next call reconnects. For tests of the reconnect path.
    #[doc(hidden)]
    pub async fn close_connection_for_tests(&self) {
        self.link.close_current().await;
    }
}

/// The longest any broker call may take — connecting, publishing with every confirm, starting a
/// consumer — before it fails as `Unavailable`/`NotConfirmed`. A broker that accepts a connection
/// and then never answers (a partition that drops packets, a publisher blocked by a resource alarm)
/// costs each call this long, never forever. It equals the dispatcher's publish lease: a publish
/// given up here is taken again by the outbox, and a duplicate is dropped by the worker's claim.
pub const CALL_BOUND: Duration = Duration::from_secs(10);

async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(CALL_BOUND, call)
        .await
        .unwrap_or_else(|_| {
            Err(BrokerError::Unavailable(format!(
                "{what}: no answer from RabbitMQ within {} s",
                CALL_BOUND.as_secs()
            )))
        })
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn publish(&self, hints: &[Hint]) -> Result<(), BrokerError> {
        if hints.is_empty() {
            return Ok(());
        }
        bounded("publishing", async {
            let session = self.link.session().await?;
            publisher::publish(&session, &self.opts.queue_prefix, hints).await
        })
        .await
    }

    async fn consume(
        &self,
        queues: &[QueueName],
        prefetch: u16,
    ) -> Result<Box<dyn Consumer>, BrokerError> {
        bounded("starting a consumer", async {
            let session = self.link.session().await?;
            let consumer =
                consumer::consume(&session, &self.opts.queue_prefix, queues, prefetch).await?;
            Ok(Box::new(consumer) as Box<dyn Consumer>)
        })
        .await
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        bounded("connecting", self.link.session()).await.map(|_| ())
    }
}
