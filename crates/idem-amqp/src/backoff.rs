//! The delay between reconnect attempts: 250 ms after the first failure, doubling up to 5 s, and
//! back to the start once a connection is made.
//!
//! Invariant: a delay is never shorter than `FIRST` nor longer than `MAX`, so a dead broker costs at
//! most one connection attempt per `FIRST`..`MAX` — the broker is never spun on.

use std::time::Duration;

/// The pause after the first failed attempt of an outage.
const FIRST: Duration = Duration::from_millis(250);
/// The longest pause between attempts.
const MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    /// The pause to take after the next failure.
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Backoff {
    /// The pause to wait after a failed attempt; each call doubles the next one, up to `MAX`.
    pub(crate) fn after_failure(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX);
        delay
    }

    /// A connection was made: the next outage starts from `FIRST` again.
    pub(crate) fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_a_quarter_second_up_to_five_seconds() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..8)
            .map(|_| b.after_failure().as_millis() as u64)
            .collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn a_success_starts_the_next_outage_from_the_first_delay() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.after_failure();
        }
        b.reset();
        assert_eq!(b.after_failure(), FIRST);
    }
}
