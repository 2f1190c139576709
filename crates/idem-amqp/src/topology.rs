//! Which AMQP queue carries an idem queue, and declaring it: one durable classic queue per idem
//! queue, named `{prefix}{queue}`, with `x-max-priority: 10`, declared on first use by a publisher or
//! a consumer.
//!
//! Invariant: every declaration uses the same arguments, so declaring an existing queue again is a
//! no-op (RabbitMQ refuses a redeclaration with different arguments).

use std::collections::HashSet;
use std::sync::Mutex;

use idem_core::broker::BrokerError;
use idem_core::ids::QueueName;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

use crate::error::unavailable;

/// Priority levels of each queue (0..=10; hints use 0..=9).
const MAX_PRIORITY: i32 = 10;

/// The AMQP queue that carries idem queue `queue`.
pub(crate) fn amqp_queue(prefix: &str, queue: &QueueName) -> String {
    format!("{prefix}{queue}")
}

/// Declares `name` (durable, priorities) on `channel`.
pub(crate) async fn declare(channel: &Channel, name: &str) -> Result<(), BrokerError> {
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::LongInt(MAX_PRIORITY));
    channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
        .await
        .map_err(|e| unavailable(&format!("declaring queue {name}"), e))?;
    Ok(())
}

/// The queues already declared on one connection, so a publish declares each queue once rather than
/// once per call.
#[derive(Debug, Default)]
pub(crate) struct Declared(Mutex<HashSet<String>>);

impl Declared {
    /// Declares `name` on `channel` unless it was declared on this connection before.
    pub(crate) async fn ensure(&self, channel: &Channel, name: &str) -> Result<(), BrokerError> {
        if self.lock().contains(name) {
            return Ok(());
        }
        declare(channel, name).await?;
        self.lock().insert(name.to_owned());
        Ok(())
    }

    /// Forgets `name` (it was deleted behind our back), so the next use declares it again.
    pub(crate) fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set holds no invariant a panic could break; a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idem_queue_maps_to_its_prefixed_amqp_queue() {
        let q = QueueName::try_from("default").unwrap();
        assert_eq!(amqp_queue("idem.", &q), "idem.default");
        assert_eq!(amqp_queue("", &q), "default");
    }
}
