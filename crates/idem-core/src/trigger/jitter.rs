//! Per-fire jitter: a delay in `[0, jitter_seconds)` derived from the job and the slot.
//!
//! Invariant: the delay is a pure function of `(job_id, slot, jitter_seconds)` that does not
//! change between builds or Rust releases, so a retried scheduler transaction or a second
//! scheduler computes the same delay for the same fire.

use chrono::{DateTime, Duration, Utc};

use super::MAX_EVERY_SECONDS;

/// Deterministic jitter in `[0, jitter_seconds)` for one fire, at millisecond precision, derived
/// from a stable hash of `(job_id, slot)` so that a retried scheduler transaction or a second
/// scheduler computes the same delay. `jitter_seconds` <= 0 or not finite → zero; it is capped at
/// 10 years.
pub fn jitter_for(job_id: &str, slot: DateTime<Utc>, jitter_seconds: f64) -> Duration {
    if !jitter_seconds.is_finite() || jitter_seconds <= 0.0 {
        return Duration::zero();
    }
    let max_ms = jitter_seconds.min(MAX_EVERY_SECONDS) * 1000.0;
    // FNV-1a over the inputs, then the SplitMix64 finaliser to spread the bits. Hand-rolled (rather
    // than std's `DefaultHasher`) because the value must not change between Rust releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = job_id
        .as_bytes()
        .iter()
        .copied()
        .chain([0xff])
        .chain(slot.timestamp().to_le_bytes())
        .chain(slot.timestamp_subsec_nanos().to_le_bytes());
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64; // uniform in [0, 1)
    let mut ms = (unit * max_ms).floor() as i64;
    if ms as f64 >= max_ms {
        // Float rounding can land exactly on the bound; the interval is half-open.
        ms = (max_ms.ceil() as i64 - 1).max(0);
    }
    Duration::milliseconds(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::test_support::at;

    #[test]
    fn jitter_is_within_bounds_and_deterministic() {
        let base = at("2024-06-01T10:00:00Z");
        let mut distinct = std::collections::BTreeSet::new();
        for i in 0..2_000 {
            let slot = base + Duration::milliseconds(i * 1_500);
            let j = jitter_for("job-a", slot, 2.5);
            assert!(
                j >= Duration::zero() && j < Duration::milliseconds(2_500),
                "{j}"
            );
            assert_eq!(
                j,
                jitter_for("job-a", slot, 2.5),
                "same inputs, same jitter"
            );
            distinct.insert(j.num_milliseconds());
        }
        assert!(distinct.len() > 1_000, "spread: {}", distinct.len());
        let differs = (0..100)
            .filter(|i| {
                let slot = base + Duration::seconds(*i);
                jitter_for("job-a", slot, 60.0) != jitter_for("job-b", slot, 60.0)
            })
            .count();
        assert!(differs > 90, "job ids decorrelate: {differs}");
        for small in [1.0, 0.001, 0.0004] {
            for i in 0..200 {
                let j = jitter_for("x", base + Duration::seconds(i), small);
                assert!(j >= Duration::zero() && j.num_milliseconds() as f64 / 1000.0 < small);
            }
        }
        for none in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(jitter_for("job-a", base, none), Duration::zero(), "{none}");
        }
        assert!(jitter_for("job-a", base, 1e12) <= Duration::seconds(315_360_000));
    }

    #[test]
    fn jitter_values_are_stable_across_builds() {
        // Pinned so a change of hash (which would move in-flight fires) is a deliberate decision.
        let slot = at("2024-06-01T10:00:00Z");
        let pinned = jitter_for("job-a", slot, 10.0);
        assert_eq!(pinned, jitter_for("job-a", slot, 10.0));
        assert_eq!(pinned.num_milliseconds(), PINNED_JITTER_MS);
    }

    const PINNED_JITTER_MS: i64 = 7_222;
}
