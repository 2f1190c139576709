//! The wire form of a hint: a small JSON body `{"task_id": "...", "queue": "...", "priority": N}`
//! sent with `content_type: application/json`, persistent delivery and the AMQP priority. A task with
//! trace context also carries its W3C `traceparent` as a message header of that name, so the
//! worker's attempt span joins the trace that submitted the task.
//!
//! Invariant: `decode(encode(h)) == h` for every hint, and `decode` never panics — a body that is not
//! an idem hint is a `BrokerError::Malformed`, which the consumer acknowledges and drops.

use idem_core::broker::{BrokerError, Hint};
use idem_core::ids::{QueueName, TaskId};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

/// The body's media type.
pub(crate) const CONTENT_TYPE: &str = "application/json";

/// AMQP `delivery_mode` for messages written to disk (they survive a broker restart).
const PERSISTENT: u8 = 2;

/// The highest AMQP priority a hint is published with; the queue is declared with one more level
/// (`x-max-priority: 10`) so the whole 0..=9 range of `Hint::priority` maps one to one.
const MAX_PRIORITY: i16 = 9;

#[derive(Serialize, Deserialize)]
struct Body {
    task_id: TaskId,
    queue: QueueName,
    priority: i16,
}

/// The JSON body of `hint`.
pub(crate) fn encode(hint: &Hint) -> Vec<u8> {
    let body = Body {
        task_id: hint.task_id,
        queue: hint.queue.clone(),
        priority: hint.priority,
    };
    // A struct of a UUID, a validated name and an integer always serializes.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The message header that carries the task's trace context.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// The hint in `data` (with the trace context of `props`), or `Malformed` when it is not one.
pub(crate) fn decode(data: &[u8], props: &BasicProperties) -> Result<Hint, BrokerError> {
    let body: Body =
        serde_json::from_slice(data).map_err(|e| BrokerError::Malformed(e.to_string()))?;
    let traceparent = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(TRACEPARENT))
        .and_then(|v| match v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        });
    Ok(Hint {
        task_id: body.task_id,
        queue: body.queue,
        priority: body.priority,
        traceparent,
    })
}

/// The AMQP priority of a hint's priority: clamped into 0..=9, higher first.
pub(crate) fn amqp_priority(priority: i16) -> u8 {
    // Clamped into 0..=9, so the cast cannot truncate.
    priority.clamp(0, MAX_PRIORITY) as u8
}

/// The properties every hint is published with.
pub(crate) fn properties(hint: &Hint) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT)
        .with_priority(amqp_priority(hint.priority))
        .with_message_id(hint.task_id.to_string().into());
    match &hint.traceparent {
        Some(tp) => {
            let mut headers = FieldTable::default();
            headers.insert(
                TRACEPARENT.into(),
                AMQPValue::LongString(LongString::from(tp.as_str())),
            );
            props.with_headers(headers)
        }
        None => props,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(priority: i16) -> Hint {
        Hint {
            task_id: TaskId::generate(),
            queue: QueueName::try_from("reports").unwrap(),
            priority,
            traceparent: None,
        }
    }

    #[test]
    fn the_trace_context_travels_in_a_header() {
        let mut h = hint(1);
        h.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let props = properties(&h);
        assert_eq!(decode(&encode(&h), &props).unwrap(), h);
        let plain = hint(1);
        assert_eq!(decode(&encode(&plain), &properties(&plain)).unwrap(), plain);
    }

    #[test]
    fn hints_round_trip_through_the_json_body() {
        for p in [0, 5, 9] {
            let h = hint(p);
            assert_eq!(decode(&encode(&h), &properties(&h)).unwrap(), h);
        }
    }

    #[test]
    fn the_body_has_the_documented_fields() {
        let h = hint(3);
        let v: serde_json::Value = serde_json::from_slice(&encode(&h)).unwrap();
        assert_eq!(v["task_id"], h.task_id.to_string());
        assert_eq!(v["queue"], "reports");
        assert_eq!(v["priority"], 3);
    }

    #[test]
    fn bodies_that_are_not_hints_are_malformed() {
        let id = TaskId::generate();
        for bad in [
            b"".to_vec(),
            b"not json".to_vec(),
            b"{}".to_vec(),
            br#"{"task_id": "nope", "queue": "q", "priority": 1}"#.to_vec(),
            format!(r#"{{"task_id": "{id}", "queue": "bad queue", "priority": 1}}"#).into_bytes(),
            format!(r#"{{"task_id": "{id}", "queue": "q"}}"#).into_bytes(),
            vec![0xff, 0xfe, 0x00],
        ] {
            assert!(
                matches!(
                    decode(&bad, &BasicProperties::default()),
                    Err(BrokerError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn priorities_are_clamped_into_the_amqp_range() {
        for (given, amqp) in [(-3, 0), (0, 0), (4, 4), (9, 9), (10, 9), (i16::MAX, 9)] {
            assert_eq!(amqp_priority(given), amqp, "{given}");
        }
    }

    #[test]
    fn messages_are_persistent_json_with_their_priority() {
        let props = properties(&hint(7));
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(props.priority(), &Some(7));
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
    }
}
