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
//! after the one asked about.
//!
//! The parts: `cron` (the dialect, and the search on a zone-less wall clock), `wall_clock` (a
//! zone's local times to instants: the DST rule), `interval` (slots every N seconds) and `jitter`.

mod cron;
mod interval;
mod jitter;
mod wall_clock;

pub use jitter::jitter_for;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use interval::{checked_every, every_duration, slot_after};

/// The longest interval (and the largest jitter) accepted: 10 years of 365 days, in seconds.
pub(crate) const MAX_EVERY_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;

fn utc() -> String {
    "UTC".to_owned()
}

/// `"timezone": null` means UTC, as leaving the field out does.
fn zone_or_utc<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_else(utc))
}

/// A job's trigger, as the API accepts and returns it (JSON tagged by "type").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Fires at every local time matching a cron expression in `timezone`.
    Cron {
        /// cronie's dialect (`man 5 crontab`): 5 fields (`min hour day-of-month month
        /// day-of-week`) with ranges, steps, lists and names (`JAN` in month, `MON` in
        /// day-of-week only); when either day field starts with `*` a day must match both, else
        /// either. Extensions: 6 fields with seconds first; `N/step` for `N-max/step`; `L` (last
        /// day of the month), `NW` (nearest weekday to day N within the month) and `LW` in
        /// day-of-month; the nicknames `@yearly @annually @monthly @weekly @daily @midnight
        /// @hourly`.
        #[schema(example = "30 2 * * MON-FRI")]
        expr: String,
        /// IANA time zone name the expression is read in; default (and `null`) `UTC`. The zone
        /// data (chrono-tz) applies no DST rule after 2099, so a fire later than that in a zone
        /// with DST is at the zone's standard time, an hour off in summer.
        #[serde(default = "utc", deserialize_with = "zone_or_utc")]
        #[schema(example = "Europe/Berlin", nullable)]
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
                let schedule =
                    cron::parse(&expr).map_err(|m| TriggerError::new("trigger.expr", m))?;
                let tz =
                    parse_zone(&timezone).map_err(|m| TriggerError::new("trigger.timezone", m))?;
                let (start_at, end_at) = checked_bounds(start_at, end_at)?;
                if wall_clock::next_after(&schedule, tz, search_from(start_at, now)).is_none() {
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
                let schedule = cron::parse(expr).ok()?;
                let tz = parse_zone(timezone).ok()?;
                not_after(wall_clock::next_after(&schedule, tz, after)?, *end_at)
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

// ---------------------------------------------------------------------------------------------
// Helpers

fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("unknown time zone {name:?} (expected an IANA name such as \"Europe/Berlin\")")
    })
}

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

#[cfg(test)]
mod json_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
