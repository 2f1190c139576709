//! How lapin's errors reach idem: every one becomes `BrokerError::Unavailable` with a short message
//! naming the step that failed, so the caller backs off and retries.
//!
//! Invariant: nothing in this crate panics on a broker error; each is mapped here.

use idem_core::broker::BrokerError;

/// `Unavailable` for a failed AMQP step.
pub(crate) fn unavailable(step: &str, e: lapin::Error) -> BrokerError {
    BrokerError::Unavailable(format!("{step}: {e}"))
}
