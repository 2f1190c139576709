//! The dialect's table tests: what each expression fires at (UTC; zones are `wall_clock`'s).

use crate::trigger::test_support::{at, check_sequences, cron};

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
