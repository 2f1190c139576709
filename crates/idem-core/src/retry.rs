//! The retry policy: exponential backoff with jitter (1 s, 2 s, 4 s … capped at 1 h), and what a
//! handler's error means for the task. Pure: the random part is an argument.

use std::time::Duration;

/// Base delay of the first retry.
pub const BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
pub const CAP: Duration = Duration::from_secs(3600);

/// The delay before retry number `retry` (1 for the first retry), with "equal jitter": half of the
/// exponential step is fixed and half is scaled by `unit` in [0, 1). The fixed half keeps retries from
/// bunching at zero; the random half spreads a thundering herd.
pub fn backoff(retry: u32, unit: f64) -> Duration {
    let exp = BASE.saturating_mul(1u32 << retry.saturating_sub(1).min(20));
    let step = exp.min(CAP);
    let half = step / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_stays_within_its_step() {
        let table = [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (4, 8.0),
            (12, 2048.0),
            (13, 3600.0),
            (40, 3600.0),
        ];
        for (retry, step) in table {
            let lo = backoff(retry, 0.0).as_secs_f64();
            let hi = backoff(retry, 0.999_999).as_secs_f64();
            assert!((lo - step / 2.0).abs() < 1e-6, "retry {retry}: lo {lo}");
            assert!(hi <= step && hi > step * 0.99, "retry {retry}: hi {hi}");
        }
    }
}
