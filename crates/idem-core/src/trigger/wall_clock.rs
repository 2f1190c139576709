//! A zone's wall clock: cron matches local times, and this maps them to instants.
//!
//! Invariant: a local time inside a spring-forward gap does not fire, a local time that occurs
//! twice on a fall-back day fires once (at its first occurrence), and every returned instant is
//! strictly after the one asked about. The schedule itself only ever sees naive local times.
//!
//! chrono-tz's data (like the IANA database it is built from, as compiled) applies no DST rule
//! after 2099: local times later than that are read at the zone's standard offset, so a summer
//! fire in, say, Europe/Berlin in 2100 is an hour later than a future rule would put it.

use chrono::offset::LocalResult;
use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::cron::Schedule;

/// At most this many candidates are looked at (and rejected) in one search, so that a
/// pathological expression (one that only ever matches inside DST gaps, say) cannot hang a caller.
const MAX_CANDIDATES: usize = 1_000;

/// The first instant strictly after `after` whose wall-clock time in `tz` matches `schedule`.
///
/// The schedule walks naive local times (it never sees a DST change); each candidate is then
/// mapped into the zone: a time in a gap is skipped, a repeated time counts only at its first
/// occurrence. `None` if the schedule finds nothing or the search runs past its bound.
pub(super) fn next_after(
    schedule: &Schedule,
    tz: Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // The schedule matches whole seconds strictly after the cursor, so any match is also after
    // `after`'s fraction of a second.
    let mut cursor = after.with_timezone(&tz).naive_local();
    for _ in 0..MAX_CANDIDATES {
        let candidate = schedule.next_after(cursor)?;
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
    use crate::trigger::cron::parse as parse_cron;
    use crate::trigger::test_support::{at, check_sequences, cron};

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
                        let matches = parsed.matches(local);
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
    fn zone_data_applies_no_dst_after_2099() {
        // Pinned because the module doc and the README say so: chrono-tz's tables stop at 2099,
        // so a Berlin summer morning in 2100 is read at CET (UTC+1), not CEST.
        check_sequences(&[
            (
                "2099: summer time",
                cron("0 9 1 7 *", "Europe/Berlin"),
                "2099-01-01T00:00:00Z",
                &["2099-07-01T07:00:00Z"],
            ),
            (
                "2100: standard time all year",
                cron("0 9 1 7 *", "Europe/Berlin"),
                "2100-01-01T00:00:00Z",
                &["2100-07-01T08:00:00Z"],
            ),
        ]);
    }
}
