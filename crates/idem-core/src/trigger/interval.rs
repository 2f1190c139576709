//! Interval triggers: slots `start_at + k * every_seconds`, at millisecond precision.
//!
//! Invariant: slots are whole milliseconds apart from `start_at`, and the slot after `t` is
//! computed, never found by stepping, so a long outage costs nothing to skip.

use chrono::{DateTime, Duration, Utc};

use super::{TriggerError, MAX_EVERY_SECONDS};

/// The period at millisecond precision, validated.
pub(super) fn checked_every(every_seconds: f64) -> Result<Duration, TriggerError> {
    let field = "trigger.every_seconds";
    if !every_seconds.is_finite() {
        return Err(TriggerError::new(
            field,
            "must be a finite number of seconds",
        ));
    }
    if every_seconds <= 0.0 {
        return Err(TriggerError::new(
            field,
            format!("must be greater than 0, got {every_seconds}"),
        ));
    }
    if every_seconds > MAX_EVERY_SECONDS {
        return Err(TriggerError::new(
            field,
            format!("must be at most {MAX_EVERY_SECONDS} (10 years), got {every_seconds}"),
        ));
    }
    every_duration(every_seconds).ok_or_else(|| {
        TriggerError::new(
            field,
            format!("must be at least 0.001 (one millisecond), got {every_seconds}"),
        )
    })
}

/// The period rounded to whole milliseconds; `None` if it is invalid or rounds to zero.
pub(super) fn every_duration(every_seconds: f64) -> Option<Duration> {
    if !every_seconds.is_finite() || every_seconds <= 0.0 || every_seconds > MAX_EVERY_SECONDS {
        return None;
    }
    let ms = (every_seconds * 1000.0).round() as i64;
    if ms < 1 {
        return None;
    }
    Duration::try_milliseconds(ms)
}

/// The first slot `start + k * every` (k >= 0) strictly after `t`.
pub(super) fn slot_after(
    start: DateTime<Utc>,
    every: Duration,
    t: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if t < start {
        return Some(start);
    }
    let every_ms = every.num_milliseconds();
    if every_ms < 1 {
        return None;
    }
    // Whole milliseconds elapsed, floored: slots are whole milliseconds apart from `start`, so
    // `k * every > floor(elapsed)` is the same as `k * every > elapsed`.
    let elapsed_ms = t.signed_duration_since(start).num_milliseconds();
    let k = elapsed_ms / every_ms + 1;
    let offset = Duration::try_milliseconds(k.checked_mul(every_ms)?)?;
    start.checked_add_signed(offset)
}

#[cfg(test)]
mod tests {
    use crate::trigger::test_support::{at, interval};
    use crate::trigger::Trigger;

    #[test]
    fn interval_slots_follow_start_at_with_millisecond_fractions() {
        type Case<'a> = (&'a str, Trigger, bool, &'a str, Option<&'a str>);
        let half = || interval(0.5, Some("2024-06-01T10:00:00Z"), None);
        let minute = || {
            interval(
                60.0,
                Some("2024-06-01T10:00:00Z"),
                Some("2024-06-01T10:06:00Z"),
            )
        };
        let cases: Vec<Case> = vec![
            (
                "0.5 s: first slot after now",
                half(),
                true,
                "2024-06-01T10:00:00.200Z",
                Some("2024-06-01T10:00:00.500Z"),
            ),
            (
                "0.5 s: next after a slot",
                half(),
                false,
                "2024-06-01T10:00:00.500Z",
                Some("2024-06-01T10:00:01Z"),
            ),
            (
                "0.5 s: next after a late time",
                half(),
                false,
                "2024-06-01T10:00:00.700Z",
                Some("2024-06-01T10:00:01Z"),
            ),
            (
                "0.5 s: sub-millisecond before a slot",
                half(),
                false,
                "2024-06-01T10:00:00.999999Z",
                Some("2024-06-01T10:00:01Z"),
            ),
            (
                "1.5 s slots",
                interval(1.5, Some("2024-06-01T10:00:00Z"), None),
                false,
                "2024-06-01T10:00:03Z",
                Some("2024-06-01T10:00:04.500Z"),
            ),
            (
                "a future start is the first fire",
                half(),
                true,
                "2024-06-01T09:00:00Z",
                Some("2024-06-01T10:00:00Z"),
            ),
            (
                "a start equal to now is the first fire",
                half(),
                true,
                "2024-06-01T10:00:00Z",
                Some("2024-06-01T10:00:00Z"),
            ),
            (
                "next_after before start is start",
                half(),
                false,
                "2024-06-01T09:00:00Z",
                Some("2024-06-01T10:00:00Z"),
            ),
            (
                "a past start: the first slot strictly after now",
                minute(),
                true,
                "2024-06-01T10:05:30Z",
                Some("2024-06-01T10:06:00Z"),
            ),
            (
                "a past start, now on a slot: the next one",
                minute(),
                true,
                "2024-06-01T10:05:00Z",
                Some("2024-06-01T10:06:00Z"),
            ),
            (
                "a slot exactly at end fires",
                minute(),
                false,
                "2024-06-01T10:05:00Z",
                Some("2024-06-01T10:06:00Z"),
            ),
            (
                "nothing after end",
                minute(),
                false,
                "2024-06-01T10:06:00Z",
                None,
            ),
            (
                "first_after past end is None",
                minute(),
                true,
                "2024-06-01T10:07:00Z",
                None,
            ),
            (
                "without start_at: one period after now",
                interval(2.0, None, None),
                true,
                "2024-06-01T10:00:00Z",
                Some("2024-06-01T10:00:02Z"),
            ),
            (
                "without start_at: one period after t",
                interval(2.0, None, None),
                false,
                "2024-06-01T10:00:00Z",
                Some("2024-06-01T10:00:02Z"),
            ),
            (
                "an invalid period never fires",
                interval(0.0, Some("2024-06-01T10:00:00Z"), None),
                true,
                "2024-06-01T09:00:00Z",
                None,
            ),
        ];
        for (name, trigger, first, when, expected) in cases {
            let got = if first {
                trigger.first_after(at(when))
            } else {
                trigger.next_after(at(when))
            };
            assert_eq!(got, expected.map(at), "case {name:?}");
        }
    }

    #[test]
    fn normalize_starts_an_interval_one_period_from_now() {
        let now = at("2024-06-01T10:00:00.123456789Z");
        let t = interval(1.5, None, None).normalize(now).expect("valid");
        assert_eq!(t, interval(1.5, Some("2024-06-01T10:00:01.623Z"), None));
        assert_eq!(t.first_after(now), Some(at("2024-06-01T10:00:01.623Z")));
        assert_eq!(
            t.clone().normalize(now),
            Ok(t),
            "normal form is a fixed point"
        );
    }
}
