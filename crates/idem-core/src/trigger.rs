//! Job triggers: when a job fires — on a cron expression in a time zone, every N seconds, or once
//! at a date — and the deterministic per-fire jitter.
//!
//! Invariant: this module is a pure function of time. It never reads the clock; every question is
//! asked with an explicit `now` or previous slot, so two schedulers (or a retried transaction)
//! asking the same question get the same answer. A [`Trigger`] is a plain serde value: nothing is
//! cached in it, cron expressions and zones are parsed on each call.
//!
//! Cron times are matched on the job zone's *local wall clock* and only then mapped to instants:
//! a local time inside a spring-forward gap does not fire, a local time that occurs twice on a
//! fall-back day fires once (at its first occurrence), and every returned instant is strictly
//! after the one asked about. croner's own DST handling is never used: it only ever sees naive
//! local times dressed up as UTC.

use chrono::offset::LocalResult;
use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, SubsecRound, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The longest interval (and the largest jitter) accepted: 10 years of 365 days, in seconds.
const MAX_EVERY_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

/// At most this many cron candidates are looked at (and rejected) in one search, so that a
/// pathological expression (one that only ever matches inside DST gaps, say) cannot hang a caller.
const MAX_CRON_STEPS: usize = 1_000;

/// Longer cron expressions are rejected outright (a full list of all 60 minutes is ~170 bytes).
const MAX_CRON_LEN: usize = 1_024;

/// The cron nicknames and the 5-field expressions they stand for.
const NICKNAMES: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

fn utc() -> String {
    "UTC".to_owned()
}

/// A job's trigger, as the API accepts and returns it (JSON tagged by "type").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Fires at every local time matching a cron expression in `timezone`.
    Cron {
        /// 5 fields (`min hour day-of-month month day-of-week`), or 6 with seconds first; ranges,
        /// steps, lists, `L` (last day of month), names (`MON`, `JAN`) and the nicknames
        /// `@yearly @annually @monthly @weekly @daily @midnight @hourly`.
        #[schema(example = "30 2 * * MON-FRI")]
        expr: String,
        /// IANA time zone name the expression is read in; default `UTC`.
        #[serde(default = "utc")]
        #[schema(example = "Europe/Berlin")]
        timezone: String,
        /// No fire before this instant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_at: Option<DateTime<Utc>>,
        /// No fire after this instant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_at: Option<DateTime<Utc>>,
    },
    /// Fires at `start_at + k * every_seconds` for k = 0, 1, 2, …
    Interval {
        /// The period in seconds: > 0, fractions allowed, millisecond precision, at most 10 years.
        #[schema(example = 60.0)]
        every_seconds: f64,
        /// The first fire; defaults to one period after the job is created.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_at: Option<DateTime<Utc>>,
        /// No fire after this instant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_at: Option<DateTime<Utc>>,
    },
    /// Fires once, at `run_at`.
    Date {
        run_at: DateTime<Utc>,
        /// The fire is dropped if `run_at` is before this instant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_at: Option<DateTime<Utc>>,
        /// The fire is dropped if `run_at` is after this instant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_at: Option<DateTime<Utc>>,
    },
}

/// Why a trigger is invalid; `field` names the JSON field (e.g. "trigger.expr", "trigger.timezone",
/// "trigger.every_seconds", "trigger.end_at").
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TriggerError {
    pub field: &'static str,
    pub message: String,
}

impl TriggerError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        TriggerError {
            field,
            message: message.into(),
        }
    }
}

impl Trigger {
    /// Checks the trigger and returns it in normal form.
    ///
    /// Errors: unparsable cron (the message says why) or one that can never fire, unknown time
    /// zone, `every_seconds` not finite, <= 0, under a millisecond or over 10 years, and
    /// `end_at <= start_at` (as given).
    ///
    /// Normal form: an Interval without `start_at` gets `start_at = now + every` (the first fire is
    /// one period from now, as APScheduler does); all timestamps are truncated to milliseconds.
    /// Everything else (the cron text, the zone name, `every_seconds`) is returned as given.
    pub fn normalize(self, now: DateTime<Utc>) -> Result<Trigger, TriggerError> {
        match self {
            Trigger::Cron {
                expr,
                timezone,
                start_at,
                end_at,
            } => {
                let cron = parse_cron(&expr).map_err(|m| TriggerError::new("trigger.expr", m))?;
                let tz =
                    parse_zone(&timezone).map_err(|m| TriggerError::new("trigger.timezone", m))?;
                let (start_at, end_at) = checked_bounds(start_at, end_at)?;
                if cron_next(&cron, tz, search_from(start_at, now)).is_none() {
                    return Err(TriggerError::new(
                        "trigger.expr",
                        format!("{expr:?} never fires in time zone {timezone}"),
                    ));
                }
                Ok(Trigger::Cron {
                    expr,
                    timezone,
                    start_at,
                    end_at,
                })
            }
            Trigger::Interval {
                every_seconds,
                start_at,
                end_at,
            } => {
                let every = checked_every(every_seconds)?;
                let (start_at, end_at) = checked_bounds(start_at, end_at)?;
                let start_at = match start_at {
                    Some(s) => s,
                    None => trunc_ms(now).checked_add_signed(every).ok_or_else(|| {
                        TriggerError::new("trigger.start_at", "now + every_seconds is out of range")
                    })?,
                };
                Ok(Trigger::Interval {
                    every_seconds,
                    start_at: Some(start_at),
                    end_at,
                })
            }
            Trigger::Date {
                run_at,
                start_at,
                end_at,
            } => {
                let (start_at, end_at) = checked_bounds(start_at, end_at)?;
                Ok(Trigger::Date {
                    run_at: trunc_ms(run_at),
                    start_at,
                    end_at,
                })
            }
        }
    }

    /// The first fire time of a freshly created/resumed/changed job, given the current time.
    ///
    /// - Date: `run_at` (even if in the past — the scheduler's misfire grace decides), unless it is
    ///   outside `start_at..=end_at`.
    /// - Interval: `start_at` if it is `>= now`, else the first slot `start_at + k * every > now`.
    ///   Without `start_at` (not normalized): `now + every`, as [`Trigger::normalize`] would set.
    /// - Cron: the first matching instant strictly after `now` and `>= start_at`.
    ///
    /// `None` when the trigger will never fire again (past `end_at`, or an invalid trigger).
    pub fn first_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Cron { .. } => self.next_after(now),
            Trigger::Interval {
                every_seconds,
                start_at,
                end_at,
            } => {
                let every = every_duration(*every_seconds)?;
                let start = match start_at {
                    Some(s) => *s,
                    None => now.checked_add_signed(every)?,
                };
                let next = if start >= now {
                    start
                } else {
                    slot_after(start, every, now)?
                };
                not_after(next, *end_at)
            }
            Trigger::Date {
                run_at,
                start_at,
                end_at,
            } => {
                if start_at.is_some_and(|s| *run_at < s) {
                    return None;
                }
                not_after(*run_at, *end_at)
            }
        }
    }

    /// The next fire strictly after `t` (normally the previous slot), never before `start_at` and
    /// never after `end_at` (`None` then).
    ///
    /// - Date: `None` (it fires once, through [`Trigger::first_after`]).
    /// - Interval: the next slot `start_at + k * every > t` (`start_at` itself if `t` is before
    ///   it). Without `start_at` (not normalized): `t + every`.
    /// - Cron: the next match after `t`, on the zone's wall clock (see the module doc for DST).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Trigger::Cron {
                expr,
                timezone,
                start_at,
                end_at,
            } => {
                let after = search_from(*start_at, t);
                if end_at.is_some_and(|e| after >= e) {
                    return None;
                }
                let cron = parse_cron(expr).ok()?;
                let tz = parse_zone(timezone).ok()?;
                not_after(cron_next(&cron, tz, after)?, *end_at)
            }
            Trigger::Interval {
                every_seconds,
                start_at,
                end_at,
            } => {
                let every = every_duration(*every_seconds)?;
                let start = match start_at {
                    Some(s) => *s,
                    None => t.checked_add_signed(every)?,
                };
                not_after(slot_after(start, every, t)?, *end_at)
            }
            Trigger::Date { .. } => None,
        }
    }
}

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

// ---------------------------------------------------------------------------------------------
// Helpers

fn trunc_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(3)
}

/// Truncates the bounds to milliseconds and checks `end_at > start_at`.
type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);
fn checked_bounds(
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
) -> Result<Bounds, TriggerError> {
    let start_at = start_at.map(trunc_ms);
    let end_at = end_at.map(trunc_ms);
    if let (Some(s), Some(e)) = (start_at, end_at) {
        if e <= s {
            return Err(TriggerError::new(
                "trigger.end_at",
                format!("must be after start_at ({s}), got {e}"),
            ));
        }
    }
    Ok((start_at, end_at))
}

/// `t` unless it is after `end_at`.
fn not_after(t: DateTime<Utc>, end_at: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match end_at {
        Some(e) if t > e => None,
        _ => Some(t),
    }
}

/// The instant a cron search must go strictly past: `t`, or just before `start_at` when that is
/// later (so a match exactly at `start_at` counts).
fn search_from(start_at: Option<DateTime<Utc>>, t: DateTime<Utc>) -> DateTime<Utc> {
    match start_at {
        Some(s) if s > t => s.checked_sub_signed(Duration::nanoseconds(1)).unwrap_or(t),
        _ => t,
    }
}

// ---- interval

/// The period at millisecond precision, validated.
fn checked_every(every_seconds: f64) -> Result<Duration, TriggerError> {
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
fn every_duration(every_seconds: f64) -> Option<Duration> {
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
fn slot_after(start: DateTime<Utc>, every: Duration, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
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

// ---- cron

fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone {name:?} (expected an IANA name such as \"Europe/Berlin\")")
    })
}

/// Parses a cron expression (5 or 6 fields, or a nickname) with croner.
fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    let trimmed = expr.trim();
    if trimmed.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if trimmed.len() > MAX_CRON_LEN || !trimmed.is_ascii() {
        return Err(format!("must be at most {MAX_CRON_LEN} ASCII characters"));
    }
    let pattern = if trimmed.starts_with('@') {
        NICKNAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(trimmed))
            .map(|(_, pattern)| *pattern)
            .ok_or_else(|| {
                let names: Vec<&str> = NICKNAMES.iter().map(|(name, _)| *name).collect();
                format!(
                    "unknown nickname {trimmed:?} (expected one of {})",
                    names.join(", ")
                )
            })?
    } else {
        trimmed
    };
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    if fields.len() != 5 && fields.len() != 6 {
        return Err(format!(
            "{expr:?} has {} fields; expected 5 (minute hour day-of-month month day-of-week) \
             or 6 (with seconds first)",
            fields.len()
        ));
    }
    let cron = croner::Cron::new(pattern)
        .with_seconds_optional()
        .parse()
        .map_err(|e| format!("invalid cron expression {expr:?}: {}", explain(&fields, &e)))?;
    // croner searches up to the year 5000 before giving up on an expression that cannot match
    // (30 February), which takes a long while; rule those out here instead.
    if !matches_some_time(&cron) {
        return Err(format!("{expr:?} never matches any date"));
    }
    Ok(cron)
}

/// Whether the expression matches at least one wall-clock time on some date.
fn matches_some_time(cron: &croner::Cron) -> bool {
    let p = &cron.pattern;
    (0..60).any(|s| p.second_match(s).unwrap_or(false))
        && (0..60).any(|m| p.minute_match(m).unwrap_or(false))
        && (0..24).any(|h| p.hour_match(h).unwrap_or(false))
        && matches_some_day(cron)
}

/// Whether the expression's month and day fields match some date. A month's days match or not
/// depending only on the month, the weekday it starts on and whether the year is a leap year, so
/// each such combination is checked once, on its first year in a full 400-year Gregorian cycle.
fn matches_some_day(cron: &croner::Cron) -> bool {
    let p = &cron.pattern;
    let mut seen = [[false; 14]; 12];
    for year in 2000..2400 {
        let leap = NaiveDate::from_ymd_opt(year, 2, 29).is_some();
        for month in 1..=12u32 {
            if !p.month_match(month).unwrap_or(false) {
                continue;
            }
            let Some(first) = NaiveDate::from_ymd_opt(year, month, 1) else {
                continue;
            };
            let key = first.weekday().num_days_from_sunday() as usize * 2 + usize::from(leap);
            let seen = &mut seen[month as usize - 1][key];
            if *seen {
                continue;
            }
            *seen = true;
            let matched = first
                .iter_days()
                .take_while(|d| d.month() == month)
                .any(|d| p.day_match(year, month, d.day()).unwrap_or(false));
            if matched {
                return true;
            }
        }
    }
    false
}

/// Names the first field croner rejects, by parsing each field alone (the error path only).
fn explain(fields: &[&str], err: &croner::errors::CronError) -> String {
    const NAMES: [&str; 6] = [
        "second",
        "minute",
        "hour",
        "day-of-month",
        "month",
        "day-of-week",
    ];
    let skip = 6 - fields.len(); // 5 fields: no seconds
    for (i, field) in fields.iter().enumerate() {
        let slot = i + skip;
        let mut probe = ["*"; 6];
        probe[slot] = field;
        if let Err(e) = croner::Cron::new(&probe.join(" "))
            .with_seconds_optional()
            .parse()
        {
            return format!("{} field {field:?}: {e}", NAMES[slot]);
        }
    }
    err.to_string()
}

/// The first instant strictly after `after` whose wall-clock time in `tz` matches `cron`.
///
/// croner walks naive local times (presented to it as UTC, so it never sees a DST change); each
/// candidate is then mapped into the zone: a time in a gap is skipped, a repeated time counts only
/// at its first occurrence. `None` if croner finds nothing or the search runs past its bound.
fn cron_next(cron: &croner::Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // croner works in whole seconds; any later match is also after the fraction.
    let mut cursor = after.with_timezone(&tz).naive_local().with_nanosecond(0)?;
    for _ in 0..MAX_CRON_STEPS {
        let candidate = cron
            .find_next_occurrence(&Utc.from_utc_datetime(&cursor), false)
            .ok()?
            .naive_utc();
        match tz.from_local_datetime(&candidate) {
            LocalResult::Single(x) => {
                let x = x.with_timezone(&Utc);
                if x > after {
                    return Some(x);
                }
                cursor = candidate;
            }
            LocalResult::Ambiguous(a, b) => {
                let first = a.min(b).with_timezone(&Utc);
                if first > after {
                    return Some(first);
                }
                // `after` is in the second pass of a repeated hour: every repeated time from here
                // on already had its first occurrence, so resume where the repetition ends.
                cursor = resume_before(tz, candidate)?;
            }
            // In a spring-forward gap: resume where the gap ends.
            LocalResult::None => cursor = resume_before(tz, candidate)?,
        }
    }
    None
}

/// One second before the first local time after `c` that maps to exactly one instant (`c` is in a
/// gap or a repeated stretch). Transitions are months apart, so the search assumes one region.
fn resume_before(tz: Tz, c: NaiveDateTime) -> Option<NaiveDateTime> {
    let single = |secs: i64| -> Option<bool> {
        let x = c.checked_add_signed(Duration::try_seconds(secs)?)?;
        Some(matches!(tz.from_local_datetime(&x), LocalResult::Single(_)))
    };
    // Probe 30 min, 1 h, 2 h, … 64 h ahead, then bisect to the second.
    let mut lo = 0i64;
    let mut hi = 1_800i64;
    loop {
        if single(hi)? {
            break;
        }
        if hi >= 64 * 3_600 {
            return None;
        }
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if single(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    c.checked_add_signed(Duration::try_seconds(hi - 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("bad test time {s}: {e}"))
            .with_timezone(&Utc)
    }

    fn cron(expr: &str, timezone: &str) -> Trigger {
        Trigger::Cron {
            expr: expr.to_owned(),
            timezone: timezone.to_owned(),
            start_at: None,
            end_at: None,
        }
    }

    fn interval(every: f64, start: Option<&str>, end: Option<&str>) -> Trigger {
        Trigger::Interval {
            every_seconds: every,
            start_at: start.map(at),
            end_at: end.map(at),
        }
    }

    /// `first_after(from)`, then `next_after` chained from each result.
    fn fires(trigger: &Trigger, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut next = trigger.first_after(from);
        while let Some(t) = next {
            if out.len() == n {
                break;
            }
            out.push(t);
            next = trigger.next_after(t);
        }
        out
    }

    fn check_sequences(cases: &[(&str, Trigger, &str, &[&str])]) {
        for (name, trigger, from, expected) in cases {
            let expected: Vec<DateTime<Utc>> = expected.iter().map(|s| at(s)).collect();
            let from = at(from);
            assert_eq!(
                fires(trigger, from, expected.len()),
                expected,
                "case {name:?}: first_after/next_after chain"
            );
            if let Some(first) = expected.first() {
                assert_eq!(
                    trigger.next_after(from),
                    Some(*first),
                    "case {name:?}: next_after(from)"
                );
            }
        }
    }

    #[test]
    fn cron_expressions_fire_at_their_matching_utc_times() {
        check_sequences(&[
            (
                "six fields: every 15 seconds",
                cron("*/15 * * * * *", "UTC"),
                "2024-06-01T12:00:07Z",
                &[
                    "2024-06-01T12:00:15Z",
                    "2024-06-01T12:00:30Z",
                    "2024-06-01T12:00:45Z",
                    "2024-06-01T12:01:00Z",
                ],
            ),
            (
                "six fields: a fraction before a match",
                cron("*/15 * * * * *", "UTC"),
                "2024-06-01T12:00:14.999Z",
                &["2024-06-01T12:00:15Z"],
            ),
            (
                "six fields: exactly on a match goes to the next one",
                cron("*/15 * * * * *", "UTC"),
                "2024-06-01T12:00:15Z",
                &["2024-06-01T12:00:30Z"],
            ),
            (
                "five fields fire at second zero",
                cron("5 4 * * *", "UTC"),
                "2024-06-01T12:00:00Z",
                &["2024-06-02T04:05:00Z", "2024-06-03T04:05:00Z"],
            ),
            (
                "steps",
                cron("0 */6 * * *", "UTC"),
                "2024-06-01T05:00:00Z",
                &[
                    "2024-06-01T06:00:00Z",
                    "2024-06-01T12:00:00Z",
                    "2024-06-01T18:00:00Z",
                    "2024-06-02T00:00:00Z",
                ],
            ),
            (
                "ranges of hours and weekdays (Friday to Monday)",
                cron("30 9-11 * * 1-5", "UTC"),
                "2024-06-07T11:00:00Z",
                &[
                    "2024-06-07T11:30:00Z",
                    "2024-06-10T09:30:00Z",
                    "2024-06-10T10:30:00Z",
                ],
            ),
            (
                "lists",
                cron("0 0 1,15 * *", "UTC"),
                "2024-06-01T00:00:00Z",
                &[
                    "2024-06-15T00:00:00Z",
                    "2024-07-01T00:00:00Z",
                    "2024-07-15T00:00:00Z",
                ],
            ),
            (
                "L is the last day of each month, leap February included",
                cron("0 12 L * *", "UTC"),
                "2024-02-10T00:00:00Z",
                &[
                    "2024-02-29T12:00:00Z",
                    "2024-03-31T12:00:00Z",
                    "2024-04-30T12:00:00Z",
                ],
            ),
            (
                "month and weekday names",
                cron("0 8 * JAN,JUL SUN", "UTC"),
                "2024-01-01T00:00:00Z",
                &[
                    "2024-01-07T08:00:00Z",
                    "2024-01-14T08:00:00Z",
                    "2024-01-21T08:00:00Z",
                    "2024-01-28T08:00:00Z",
                    "2024-07-07T08:00:00Z",
                ],
            ),
            (
                "lower-case names",
                cron("0 8 * jan mon-fri", "UTC"),
                "2024-01-05T09:00:00Z",
                &["2024-01-08T08:00:00Z"],
            ),
            (
                "weekday 7 is Sunday",
                cron("0 0 * * 7", "UTC"),
                "2024-06-05T10:30:00Z",
                &["2024-06-09T00:00:00Z"],
            ),
            (
                "30 February never exists, 29 February every 4 years",
                cron("0 0 29 2 *", "UTC"),
                "2024-03-01T00:00:00Z",
                &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"],
            ),
        ]);
    }

    #[test]
    fn cron_nicknames_expand_to_their_expressions() {
        let from = "2024-06-05T10:30:00Z"; // a Wednesday
        let cases: &[(&str, &str)] = &[
            ("@yearly", "2025-01-01T00:00:00Z"),
            ("@annually", "2025-01-01T00:00:00Z"),
            ("@monthly", "2024-07-01T00:00:00Z"),
            ("@weekly", "2024-06-09T00:00:00Z"),
            ("@daily", "2024-06-06T00:00:00Z"),
            ("@midnight", "2024-06-06T00:00:00Z"),
            ("@hourly", "2024-06-05T11:00:00Z"),
            ("@DAILY", "2024-06-06T00:00:00Z"),
            ("  @hourly ", "2024-06-05T11:00:00Z"),
        ];
        for (expr, expected) in cases {
            assert_eq!(
                cron(expr, "UTC").first_after(at(from)),
                Some(at(expected)),
                "nickname {expr:?}"
            );
        }
    }

    #[test]
    fn cron_reads_the_expression_on_the_zones_wall_clock() {
        check_sequences(&[
            (
                "Berlin winter is UTC+1",
                cron("0 9 * * *", "Europe/Berlin"),
                "2024-01-15T00:00:00Z",
                &["2024-01-15T08:00:00Z"],
            ),
            (
                "Berlin summer is UTC+2",
                cron("0 9 * * *", "Europe/Berlin"),
                "2024-07-15T00:00:00Z",
                &["2024-07-15T07:00:00Z"],
            ),
            (
                "half-hour offsets (Kolkata)",
                cron("0 9 * * *", "Asia/Kolkata"),
                "2024-07-15T00:00:00Z",
                &["2024-07-15T03:30:00Z"],
            ),
            (
                "New York winter is UTC-5",
                cron("0 9 * * *", "America/New_York"),
                "2024-01-15T00:00:00Z",
                &["2024-01-15T14:00:00Z"],
            ),
            (
                "the local day is the zone's, not UTC's",
                cron("0 23 * * *", "America/New_York"),
                "2024-06-01T00:00:00Z",
                &["2024-06-01T03:00:00Z", "2024-06-02T03:00:00Z"],
            ),
        ]);
    }

    #[test]
    fn cron_times_in_a_spring_forward_gap_do_not_fire() {
        check_sequences(&[
            (
                "New York 02:30 is skipped on 10 March 2024",
                cron("30 2 * * *", "America/New_York"),
                "2024-03-09T00:00:00Z",
                &["2024-03-09T07:30:00Z", "2024-03-11T06:30:00Z"],
            ),
            (
                "Berlin 02:30 is skipped on 31 March 2024",
                cron("30 2 * * *", "Europe/Berlin"),
                "2024-03-30T00:00:00Z",
                &["2024-03-30T01:30:00Z", "2024-04-01T00:30:00Z"],
            ),
            (
                "New York hourly: the missing 02:00 leaves the UTC hours contiguous",
                cron("0 * * * *", "America/New_York"),
                "2024-03-10T05:30:00Z",
                &[
                    "2024-03-10T06:00:00Z",
                    "2024-03-10T07:00:00Z",
                    "2024-03-10T08:00:00Z",
                ],
            ),
            (
                "Berlin hourly across spring-forward",
                cron("0 * * * *", "Europe/Berlin"),
                "2024-03-30T23:30:00Z",
                &[
                    "2024-03-31T00:00:00Z",
                    "2024-03-31T01:00:00Z",
                    "2024-03-31T02:00:00Z",
                ],
            ),
            (
                "every minute jumps over the gap",
                cron("* * * * *", "America/New_York"),
                "2024-03-10T06:58:30Z",
                &[
                    "2024-03-10T06:59:00Z",
                    "2024-03-10T07:00:00Z",
                    "2024-03-10T07:01:00Z",
                ],
            ),
            (
                "every second jumps over the gap",
                cron("* * * * * *", "Europe/Berlin"),
                "2024-03-31T00:59:58Z",
                &[
                    "2024-03-31T00:59:59Z",
                    "2024-03-31T01:00:00Z",
                    "2024-03-31T01:00:01Z",
                ],
            ),
            (
                "a date whose only match is in a gap waits for a year where it exists",
                cron("30 2 10 3 *", "America/New_York"),
                "2024-01-01T00:00:00Z",
                &["2025-03-10T06:30:00Z"],
            ),
        ]);
    }

    #[test]
    fn cron_times_repeated_by_fall_back_fire_once_at_the_first_occurrence() {
        check_sequences(&[
            (
                "New York 01:30 fires once on 3 November 2024 (EDT)",
                cron("30 1 * * *", "America/New_York"),
                "2024-11-02T12:00:00Z",
                &["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"],
            ),
            (
                "New York 01:30 asked during the second pass: already fired",
                cron("30 1 * * *", "America/New_York"),
                "2024-11-03T06:15:00Z",
                &["2024-11-04T06:30:00Z"],
            ),
            (
                "Berlin 02:30 fires once on 27 October 2024 (CEST)",
                cron("30 2 * * *", "Europe/Berlin"),
                "2024-10-26T12:00:00Z",
                &["2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z"],
            ),
            (
                "New York hourly: the repeated 01:00 fires once, so one UTC hour has none",
                cron("0 * * * *", "America/New_York"),
                "2024-11-03T04:30:00Z",
                &[
                    "2024-11-03T05:00:00Z",
                    "2024-11-03T07:00:00Z",
                    "2024-11-03T08:00:00Z",
                ],
            ),
            (
                "Berlin hourly: the repeated 02:00 fires once",
                cron("0 * * * *", "Europe/Berlin"),
                "2024-10-26T23:30:00Z",
                &[
                    "2024-10-27T00:00:00Z",
                    "2024-10-27T02:00:00Z",
                    "2024-10-27T03:00:00Z",
                ],
            ),
            (
                "half-hourly in the repeated hour",
                cron("*/30 1 * * *", "America/New_York"),
                "2024-11-03T05:10:00Z",
                &[
                    "2024-11-03T05:30:00Z",
                    "2024-11-04T06:00:00Z",
                    "2024-11-04T06:30:00Z",
                ],
            ),
            (
                "every second: the end of the first pass goes straight to 02:00 EST",
                cron("* * * * * *", "America/New_York"),
                "2024-11-03T05:59:58Z",
                &[
                    "2024-11-03T05:59:59Z",
                    "2024-11-03T07:00:00Z",
                    "2024-11-03T07:00:01Z",
                ],
            ),
            (
                "every second asked during the second pass waits it out",
                cron("* * * * * *", "America/New_York"),
                "2024-11-03T06:00:30Z",
                &["2024-11-03T07:00:00Z", "2024-11-03T07:00:01Z"],
            ),
        ]);
    }

    #[test]
    fn cron_agrees_with_a_minute_by_minute_walk_around_dst_transitions() {
        // Independent oracle: walk every UTC minute, read it on the zone's wall clock, and let it
        // fire when the expression matches and it is the first instant showing that local time.
        let transitions = [
            ("America/New_York", "2024-03-10T07:00:00Z"),
            ("America/New_York", "2024-11-03T06:00:00Z"),
            ("Europe/Berlin", "2024-03-31T01:00:00Z"),
            ("Europe/Berlin", "2024-10-27T01:00:00Z"),
        ];
        let mut checked = 0;
        let exprs = [
            "*/7 * * * *",
            "0,30 1,2,3 * * *",
            "15 * * * *",
            "59 1 * * *",
            "0 2 * * *",
        ];
        for (zone, at_transition) in transitions {
            let tz: Tz = zone.parse().expect("zone");
            let start = at(at_transition) - Duration::hours(6);
            let minutes: Vec<DateTime<Utc>> =
                (0..12 * 60).map(|m| start + Duration::minutes(m)).collect();
            for expr in exprs {
                let parsed = parse_cron(expr).expect("valid");
                let fires: Vec<DateTime<Utc>> = minutes
                    .iter()
                    .copied()
                    .filter(|x| {
                        let local = x.with_timezone(&tz).naive_local();
                        let matches = parsed
                            .is_time_matching(&Utc.from_utc_datetime(&local))
                            .expect("matchable");
                        let first = tz.from_local_datetime(&local).earliest();
                        matches && first.map(|f| f.with_timezone(&Utc)) == Some(*x)
                    })
                    .collect();
                let trigger = cron(expr, zone);
                for q in (0..12 * 60 * 60).step_by(401) {
                    let t = start + Duration::seconds(q);
                    let Some(expected) = fires.iter().find(|f| **f > t) else {
                        continue;
                    };
                    assert_eq!(
                        trigger.next_after(t),
                        Some(*expected),
                        "{expr:?} in {zone} after {t}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 1_000, "only {checked} comparisons");
    }

    #[test]
    fn cron_timezone_defaults_to_utc() {
        let t: Trigger = serde_json::from_value(json!({"type": "cron", "expr": "0 9 * * *"}))
            .expect("valid trigger");
        assert_eq!(t, cron("0 9 * * *", "UTC"));
        assert_eq!(
            t.first_after(at("2024-07-15T00:00:00Z")),
            Some(at("2024-07-15T09:00:00Z"))
        );
    }

    #[test]
    fn cron_respects_start_and_end_bounds() {
        let bounded = |start: Option<&str>, end: Option<&str>| Trigger::Cron {
            expr: "0 * * * *".to_owned(),
            timezone: "UTC".to_owned(),
            start_at: start.map(at),
            end_at: end.map(at),
        };
        type Case<'a> = (&'a str, Trigger, bool, &'a str, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "not before a future start",
                bounded(Some("2024-06-01T15:30:00Z"), None),
                true,
                "2024-06-01T10:00:00Z",
                Some("2024-06-01T16:00:00Z"),
            ),
            (
                "a match exactly at start counts",
                bounded(Some("2024-06-01T15:00:00Z"), None),
                true,
                "2024-06-01T10:00:00Z",
                Some("2024-06-01T15:00:00Z"),
            ),
            (
                "next_after before start also waits for it",
                bounded(Some("2024-06-01T15:00:00Z"), None),
                false,
                "2024-06-01T10:00:00Z",
                Some("2024-06-01T15:00:00Z"),
            ),
            (
                "a past start changes nothing",
                bounded(Some("2024-06-01T05:00:00Z"), None),
                true,
                "2024-06-01T10:30:00Z",
                Some("2024-06-01T11:00:00Z"),
            ),
            (
                "a match exactly at end counts",
                bounded(None, Some("2024-06-01T12:00:00Z")),
                false,
                "2024-06-01T11:00:00Z",
                Some("2024-06-01T12:00:00Z"),
            ),
            (
                "nothing after end",
                bounded(None, Some("2024-06-01T12:00:00Z")),
                false,
                "2024-06-01T12:00:00Z",
                None,
            ),
            (
                "first_after past end is None",
                bounded(None, Some("2024-06-01T12:00:00Z")),
                true,
                "2024-06-01T13:00:00Z",
                None,
            ),
            (
                "end before the next match is None",
                bounded(None, Some("2024-06-01T12:59:59Z")),
                true,
                "2024-06-01T12:00:00Z",
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
    fn an_invalid_unnormalized_cron_never_fires() {
        for t in [
            cron("not a cron", "UTC"),
            cron("0 0 * * *", "Mars/Base"),
            cron("0 0 30 2 *", "UTC"),
        ] {
            assert_eq!(t.first_after(at("2024-01-01T00:00:00Z")), None, "{t:?}");
            assert_eq!(t.next_after(at("2024-01-01T00:00:00Z")), None, "{t:?}");
        }
    }

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

    #[test]
    fn a_date_fires_once_at_run_at() {
        let date = |start: Option<&str>, end: Option<&str>| Trigger::Date {
            run_at: at("2024-06-01T10:00:00Z"),
            start_at: start.map(at),
            end_at: end.map(at),
        };
        let cases: Vec<(&str, Trigger, &str, Option<&str>)> = vec![
            (
                "before run_at",
                date(None, None),
                "2024-06-01T09:00:00Z",
                Some("2024-06-01T10:00:00Z"),
            ),
            (
                "a little after run_at (misfire grace decides)",
                date(None, None),
                "2024-06-01T10:00:05Z",
                Some("2024-06-01T10:00:00Z"),
            ),
            (
                "inside its bounds",
                date(
                    Some("2024-06-01T10:00:00Z"),
                    Some("2024-06-01T10:00:00.001Z"),
                ),
                "2024-06-01T09:00:00Z",
                Some("2024-06-01T10:00:00Z"),
            ),
            (
                "run_at before start_at",
                date(Some("2024-06-01T10:00:01Z"), None),
                "2024-06-01T09:00:00Z",
                None,
            ),
            (
                "run_at after end_at",
                date(None, Some("2024-06-01T09:59:59Z")),
                "2024-06-01T09:00:00Z",
                None,
            ),
        ];
        for (name, trigger, now, expected) in cases {
            assert_eq!(
                trigger.first_after(at(now)),
                expected.map(at),
                "case {name:?}"
            );
            assert_eq!(
                trigger.next_after(at(now)),
                None,
                "case {name:?}: next_after"
            );
        }
        assert_eq!(
            date(None, None).next_after(at("2024-06-01T10:00:00Z")),
            None
        );
    }

    #[test]
    fn normalize_rejects_invalid_triggers_naming_the_field() {
        let now = at("2024-06-01T10:00:00Z");
        let with_bounds = |t: Trigger, s: &str, e: &str| match t {
            Trigger::Cron { expr, timezone, .. } => Trigger::Cron {
                expr,
                timezone,
                start_at: Some(at(s)),
                end_at: Some(at(e)),
            },
            Trigger::Interval { every_seconds, .. } => Trigger::Interval {
                every_seconds,
                start_at: Some(at(s)),
                end_at: Some(at(e)),
            },
            Trigger::Date { run_at, .. } => Trigger::Date {
                run_at,
                start_at: Some(at(s)),
                end_at: Some(at(e)),
            },
        };
        let date = Trigger::Date {
            run_at: now,
            start_at: None,
            end_at: None,
        };
        let cases: Vec<(&str, Trigger, &str, &str)> = vec![
            (
                "garbage cron",
                cron("not a cron", "UTC"),
                "trigger.expr",
                "fields",
            ),
            ("empty cron", cron("  ", "UTC"), "trigger.expr", "empty"),
            (
                "four fields",
                cron("* * * *", "UTC"),
                "trigger.expr",
                "4 fields",
            ),
            (
                "seven fields",
                cron("0 0 0 * * * *", "UTC"),
                "trigger.expr",
                "7 fields",
            ),
            (
                "minute out of range",
                cron("61 * * * *", "UTC"),
                "trigger.expr",
                "minute field \"61\"",
            ),
            (
                "hour out of range",
                cron("0 0 25 * * *", "UTC"),
                "trigger.expr",
                "hour field \"25\"",
            ),
            (
                "bad month name",
                cron("0 0 1 FOO *", "UTC"),
                "trigger.expr",
                "month field",
            ),
            (
                "zero step",
                cron("*/0 * * * *", "UTC"),
                "trigger.expr",
                "minute field",
            ),
            (
                "unknown nickname",
                cron("@fortnightly", "UTC"),
                "trigger.expr",
                "unknown nickname",
            ),
            (
                "30 February",
                cron("0 0 30 2 *", "UTC"),
                "trigger.expr",
                "never matches",
            ),
            (
                "hour list with no hours",
                cron("0 , * * *", "UTC"),
                "trigger.expr",
                "never matches",
            ),
            (
                "31st of 30-day months",
                cron("0 0 31 4,6,9,11 *", "UTC"),
                "trigger.expr",
                "never matches",
            ),
            (
                "unknown zone",
                cron("0 0 * * *", "Mars/Base"),
                "trigger.timezone",
                "Mars/Base",
            ),
            (
                "empty zone",
                cron("0 0 * * *", ""),
                "trigger.timezone",
                "unknown time zone",
            ),
            (
                "every 0",
                interval(0.0, None, None),
                "trigger.every_seconds",
                "greater than 0",
            ),
            (
                "every -1",
                interval(-1.0, None, None),
                "trigger.every_seconds",
                "greater than 0",
            ),
            (
                "every NaN",
                interval(f64::NAN, None, None),
                "trigger.every_seconds",
                "finite",
            ),
            (
                "every infinity",
                interval(f64::INFINITY, None, None),
                "trigger.every_seconds",
                "finite",
            ),
            (
                "every over 10 years",
                interval(1e10, None, None),
                "trigger.every_seconds",
                "10 years",
            ),
            (
                "every under a millisecond",
                interval(0.0001, None, None),
                "trigger.every_seconds",
                "millisecond",
            ),
            (
                "cron end before start",
                with_bounds(
                    cron("0 * * * *", "UTC"),
                    "2024-07-01T00:00:00Z",
                    "2024-06-01T00:00:00Z",
                ),
                "trigger.end_at",
                "after start_at",
            ),
            (
                "interval end equal to start",
                with_bounds(
                    interval(1.0, None, None),
                    "2024-07-01T00:00:00Z",
                    "2024-07-01T00:00:00Z",
                ),
                "trigger.end_at",
                "after start_at",
            ),
            (
                "date end equal to start after ms truncation",
                with_bounds(
                    date,
                    "2024-07-01T00:00:00.0001Z",
                    "2024-07-01T00:00:00.0009Z",
                ),
                "trigger.end_at",
                "after start_at",
            ),
        ];
        for (name, trigger, field, needle) in cases {
            match trigger.clone().normalize(now) {
                Ok(t) => panic!("case {name:?}: {trigger:?} normalized to {t:?}"),
                Err(e) => {
                    assert_eq!(e.field, field, "case {name:?}: {e}");
                    assert!(e.message.contains(needle), "case {name:?}: {e}");
                    assert!(e.to_string().starts_with(field), "case {name:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn normalize_keeps_valid_triggers_truncating_timestamps_to_milliseconds() {
        let now = at("2024-06-01T10:00:00Z");
        let cases: Vec<(Trigger, Trigger)> = vec![
            (
                Trigger::Cron {
                    expr: " */15 * * * * * ".to_owned(),
                    timezone: "Europe/Berlin".to_owned(),
                    start_at: Some(at("2024-06-01T10:00:00.123456Z")),
                    end_at: Some(at("2024-07-01T10:00:00.999999Z")),
                },
                Trigger::Cron {
                    expr: " */15 * * * * * ".to_owned(),
                    timezone: "Europe/Berlin".to_owned(),
                    start_at: Some(at("2024-06-01T10:00:00.123Z")),
                    end_at: Some(at("2024-07-01T10:00:00.999Z")),
                },
            ),
            (cron("@weekly", "UTC"), cron("@weekly", "UTC")),
            (
                interval(0.5, Some("2024-05-01T00:00:00.0005Z"), None),
                interval(0.5, Some("2024-05-01T00:00:00Z"), None),
            ),
            (
                Trigger::Date {
                    run_at: at("2024-05-01T00:00:00.987654Z"),
                    start_at: None,
                    end_at: None,
                },
                Trigger::Date {
                    run_at: at("2024-05-01T00:00:00.987Z"),
                    start_at: None,
                    end_at: None,
                },
            ),
        ];
        for (given, expected) in cases {
            assert_eq!(given.clone().normalize(now), Ok(expected), "{given:?}");
        }
    }

    #[test]
    fn triggers_round_trip_through_tagged_json() {
        let cases = vec![
            (
                cron("0 9 * * *", "Europe/Berlin"),
                json!({"type": "cron", "expr": "0 9 * * *", "timezone": "Europe/Berlin"}),
            ),
            (
                interval(0.5, Some("2024-06-01T10:00:00Z"), None),
                json!({"type": "interval", "every_seconds": 0.5, "start_at": "2024-06-01T10:00:00Z"}),
            ),
            (
                Trigger::Date {
                    run_at: at("2024-06-01T10:00:00Z"),
                    start_at: None,
                    end_at: Some(at("2024-06-02T10:00:00Z")),
                },
                json!({"type": "date", "run_at": "2024-06-01T10:00:00Z", "end_at": "2024-06-02T10:00:00Z"}),
            ),
        ];
        for (trigger, value) in cases {
            assert_eq!(serde_json::to_value(&trigger).expect("serializes"), value);
            assert_eq!(
                serde_json::from_value::<Trigger>(value).expect("deserializes"),
                trigger
            );
        }
        for bad in [
            json!({"type": "date", "run_at": "2024-06-01T10:00:00Z", "every_seconds": 1}),
            json!({"type": "weekly", "expr": "0 0 * * *"}),
            json!({"expr": "0 0 * * *"}),
            json!({"type": "interval"}),
        ] {
            assert!(
                serde_json::from_value::<Trigger>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let schema = serde_json::to_string(&<Trigger as utoipa::PartialSchema>::schema())
            .expect("schema serializes");
        assert!(schema.contains("every_seconds") && schema.contains("timezone"));
    }

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
