//! Time helpers shared by every layer: idem keeps timestamps at millisecond precision everywhere
//! (store, keys, API), so a value that round-trips through any store compares equal.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// Truncates to whole milliseconds.
pub fn trunc_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    from_ms(t.timestamp_millis())
}

/// Milliseconds since the Unix epoch to a timestamp (saturating at the representable range).
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// RFC 3339 with milliseconds and `Z`, e.g. `2026-11-27T03:00:00.000Z`.
pub fn rfc3339_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A `std` duration from (possibly fractional) seconds, clamped to [0, 10 years]; NaN is zero.
pub fn secs_f64(s: f64) -> std::time::Duration {
    const MAX: f64 = 10.0 * 365.0 * 86_400.0;
    if s.is_nan() || s <= 0.0 {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_secs_f64(s.min(MAX))
    }
}

/// A chrono duration from (possibly fractional) seconds, at millisecond precision.
pub fn chrono_secs(s: f64) -> chrono::Duration {
    chrono::Duration::milliseconds(secs_f64(s).as_millis() as i64)
}
