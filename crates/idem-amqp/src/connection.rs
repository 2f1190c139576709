//! The one shared AMQP connection of an `AmqpBroker`, re-established lazily: a call that finds it
//! closed (RabbitMQ restarted, the network dropped, a test closed it) connects again before going on.
//!
//! Invariants:
//! - at most one reconnect attempt is in flight (the state lock is held while connecting), and after a
//!   failed attempt the next waits out a 250 ms–5 s exponential backoff; calls made meanwhile fail
//!   fast with `Unavailable` instead of spinning on the broker;
//! - an outage is logged once: a warning when the loss is first seen, an info line on recovery
//!   (counted in `idem_dependency_reconnects_total{dependency="broker"}`).

use std::sync::Arc;
use std::time::Duration;

use idem_core::broker::BrokerError;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::unavailable;
use crate::topology::Declared;

/// How long one connection attempt (TCP, TLS and the AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One established connection and what was set up on it. Replaced as a whole on reconnect, so
/// nothing set up on a dead connection is reused.
pub(crate) struct Session {
    pub(crate) conn: Connection,
    /// The publisher's channel, in confirm mode; opened on first publish and reopened if it closes.
    publisher: Mutex<Option<Channel>>,
    /// Queues declared on this connection.
    pub(crate) declared: Declared,
}

impl Session {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            publisher: Mutex::new(None),
            declared: Declared::default(),
        }
    }

    fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// The confirm-mode channel publishes go through (shared by concurrent publishes: each awaits its
    /// own confirms).
    pub(crate) async fn publisher(&self) -> Result<Channel, BrokerError> {
        let mut slot = self.publisher.lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable("enabling publisher confirms", e))?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// A new channel on this connection.
    pub(crate) async fn channel(&self) -> Result<Channel, BrokerError> {
        self.conn
            .create_channel()
            .await
            .map_err(|e| unavailable("opening a channel", e))
    }
}

/// The shared connection and the reconnect bookkeeping.
pub(crate) struct Link {
    url: String,
    state: Mutex<State>,
}

struct State {
    /// The current connection; it may have died since it was made.
    session: Arc<Session>,
    /// Set once the current outage has been logged, so it is logged once.
    outage: bool,
    /// No reconnect attempt before this instant.
    next_attempt: Instant,
    backoff: Backoff,
}

impl Link {
    /// Connects to `url`; the first connection must succeed.
    pub(crate) async fn connect(url: &str) -> Result<Self, BrokerError> {
        let conn = open(url).await?;
        Ok(Self {
            url: url.to_owned(),
            state: Mutex::new(State {
                session: Arc::new(Session::new(conn)),
                outage: false,
                next_attempt: Instant::now(),
                backoff: Backoff::default(),
            }),
        })
    }

    /// The live session, reconnecting first if the connection was lost (subject to the backoff).
    pub(crate) async fn session(&self) -> Result<Arc<Session>, BrokerError> {
        let mut state = self.state.lock().await;
        if state.session.is_connected() {
            return Ok(state.session.clone());
        }
        if !state.outage {
            state.outage = true;
            tracing::warn!(
                status = ?state.session.conn.status(),
                "AMQP connection lost; reconnecting on the next broker call"
            );
        }
        let now = Instant::now();
        if now < state.next_attempt {
            return Err(BrokerError::Unavailable(format!(
                "AMQP connection lost; next reconnect attempt in {} ms",
                (state.next_attempt - now).as_millis()
            )));
        }
        match open(&self.url).await {
            Ok(conn) => {
                state.session = Arc::new(Session::new(conn));
                state.outage = false;
                state.backoff.reset();
                tracing::info!("AMQP connection re-established");
                metrics::counter!(idem_core::metrics::DEPENDENCY_RECONNECTS_TOTAL, "dependency" => "broker")
                    .increment(1);
                Ok(state.session.clone())
            }
            Err(e) => {
                let delay = state.backoff.after_failure();
                state.next_attempt = Instant::now() + delay;
                tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "AMQP reconnect failed");
                Err(e)
            }
        }
    }

    /// Closes the current connection as if the broker had dropped it; the next call reconnects.
    pub(crate) async fn close_current(&self) {
        let session = self.state.lock().await.session.clone();
        if let Err(e) = session.conn.close(320, "closed by idem".into()).await {
            tracing::debug!(error = %e, "closing the AMQP connection");
        }
    }
}

/// Opens one connection to `url`.
async fn open(url: &str) -> Result<Connection, BrokerError> {
    let props = ConnectionProperties::default().with_connection_name("idem".into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(unavailable("connecting to RabbitMQ", e)),
        Err(_) => Err(BrokerError::Unavailable(format!(
            "connecting to RabbitMQ: no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idem_testkit::services::{or_skip, service_url};

    #[tokio::test]
    async fn a_failed_reconnect_waits_out_its_backoff_instead_of_retrying_at_once() {
        let url = service_url(
            "IDEM_TEST_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        );
        let Some(mut link) = or_skip("RabbitMQ", Link::connect(&url).await) else {
            return;
        };
        // From now on every reconnect attempt is refused.
        link.url = "amqp://guest:guest@127.0.0.1:1/%2f".to_owned();
        link.close_current().await;

        let first = link
            .session()
            .await
            .err()
            .expect("the reconnect is refused");
        assert!(first.to_string().contains("connecting"), "{first}");
        let second = link.session().await.err().expect("still down");
        assert!(
            second.to_string().contains("next reconnect attempt in"),
            "a second attempt was made at once: {second}"
        );
    }
}
