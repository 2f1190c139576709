//! Publishing a batch of hints with publisher confirms: every hint is written to the confirm channel
//! first, then every confirm is awaited, so a batch costs one round trip rather than one per hint.
//!
//! Invariant: `publish` returns `Ok` only when RabbitMQ has confirmed every hint of the batch as
//! routed to its (durable) queue and persisted; a nack or an unroutable return is `NotConfirmed`.

use std::collections::BTreeSet;

use futures::future::{join_all, try_join_all};
use idem_core::broker::{BrokerError, Hint};
use lapin::options::BasicPublishOptions;
use lapin::Confirmation;

use crate::connection::Session;
use crate::error::unavailable;
use crate::message;
use crate::topology::amqp_queue;

/// Publishes `hints` on `session` to the queues named with `prefix`, and waits for all confirms.
pub(crate) async fn publish(
    session: &Session,
    prefix: &str,
    hints: &[Hint],
) -> Result<(), BrokerError> {
    if hints.is_empty() {
        return Ok(());
    }
    let channel = session.publisher().await?;
    let names: Vec<String> = hints.iter().map(|h| amqp_queue(prefix, &h.queue)).collect();
    // Declared before the first publish: the default exchange drops (and returns) messages for a
    // queue that does not exist yet.
    for name in names.iter().collect::<BTreeSet<_>>() {
        session.declared.ensure(&channel, name).await?;
    }

    // All sends are started before any is awaited (a send takes its delivery tag and queues its
    // frames when first polled), then all confirms are awaited: the batch is pipelined rather than
    // paying a round trip per hint.
    let bodies: Vec<Vec<u8>> = hints.iter().map(message::encode).collect();
    let sends = hints
        .iter()
        .zip(&names)
        .zip(&bodies)
        .map(|((hint, name), body)| {
            channel.basic_publish(
                "".into(),
                name.as_str().into(),
                // Mandatory: a message for a queue deleted behind our back comes back instead of being
                // confirmed and silently dropped.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                message::properties(hint),
            )
        });
    let confirms = try_join_all(sends)
        .await
        .map_err(|e| unavailable("publishing", e))?;

    let mut failure = None;
    for (result, name) in join_all(confirms).await.into_iter().zip(&names) {
        let problem = match result {
            Ok(Confirmation::Ack(None)) => continue,
            Ok(Confirmation::Ack(Some(returned))) | Ok(Confirmation::Nack(Some(returned))) => {
                session.declared.forget(name);
                BrokerError::NotConfirmed(format!(
                    "returned by RabbitMQ ({} {}) for queue {name}",
                    returned.reply_code, returned.reply_text
                ))
            }
            Ok(Confirmation::Nack(None)) => {
                BrokerError::NotConfirmed(format!("nacked by RabbitMQ for queue {name}"))
            }
            Ok(Confirmation::NotRequested) => {
                BrokerError::NotConfirmed("the publisher channel is not in confirm mode".to_owned())
            }
            Err(e) => unavailable("awaiting publisher confirms", e),
        };
        // The first problem is reported; the loop goes on so every returned queue is forgotten.
        failure.get_or_insert(problem);
    }
    failure.map_or(Ok(()), Err)
}
