//! Trigger-level tests: normalization, bounds and dates (the JSON form is `json_tests`).

use super::test_support::{at, cron, interval};
use super::Trigger;

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
            "hour field \",\": empty list element",
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
