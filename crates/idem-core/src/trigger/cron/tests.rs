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

#[test]
fn day_fields_are_anded_when_either_starts_with_a_star_and_ored_otherwise() {
    check_sequences(&[
        (
            "*/2 and Monday: odd-numbered days that are Mondays",
            cron("0 0 */2 * 1", "UTC"),
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-13T00:00:00Z",
                "2025-01-27T00:00:00Z",
                "2025-02-03T00:00:00Z",
                "2025-02-17T00:00:00Z",
            ],
        ),
        (
            "the 15th and */1: the 15th only",
            cron("0 0 15 * */1", "UTC"),
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-15T00:00:00Z",
                "2025-02-15T00:00:00Z",
                "2025-03-15T00:00:00Z",
            ],
        ),
        (
            "a list that starts with * counts as starting with *",
            cron("0 0 *,15 * MON", "UTC"),
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-06T00:00:00Z",
                "2025-01-13T00:00:00Z",
                "2025-01-20T00:00:00Z",
            ],
        ),
        (
            "neither starts with *: the 1st, the 15th and every Monday",
            cron("0 0 1,15 * MON", "UTC"),
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-06T00:00:00Z",
                "2025-01-13T00:00:00Z",
                "2025-01-15T00:00:00Z",
                "2025-01-20T00:00:00Z",
                "2025-01-27T00:00:00Z",
                "2025-02-01T00:00:00Z",
                "2025-02-03T00:00:00Z",
            ],
        ),
        (
            "every day of the month spelled as a range is not a star: daily",
            cron("0 0 1-31 * 1,*/3", "UTC"),
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-02T00:00:00Z",
                "2025-01-03T00:00:00Z",
                "2025-01-04T00:00:00Z",
            ],
        ),
        (
            "Friday the 13th needs the star rule the other way: it is the 13th or a Friday",
            cron("0 0 13 * FRI", "UTC"),
            "2025-06-01T00:00:00Z",
            &[
                "2025-06-06T00:00:00Z",
                "2025-06-13T00:00:00Z",
                "2025-06-20T00:00:00Z",
            ],
        ),
        (
            "a restricted day-of-week with day-of-month *",
            cron("0 0 * * SAT", "UTC"),
            "2025-01-01T00:00:00Z",
            &["2025-01-04T00:00:00Z", "2025-01-11T00:00:00Z"],
        ),
        (
            "a stepped day-of-week with a plain day-of-month: AND",
            cron("0 0 1 * */2", "UTC"),
            "2025-01-01T00:00:00Z",
            &[
                // 1 Jan 2025 is a Wednesday, not Sun/Tue/Thu/Sat; 1 Feb a Saturday, 1 Mar a
                // Saturday, 1 Apr a Tuesday.
                "2025-02-01T00:00:00Z",
                "2025-03-01T00:00:00Z",
                "2025-04-01T00:00:00Z",
            ],
        ),
    ]);
}

#[test]
fn names_are_read_in_their_own_field_in_any_case() {
    check_sequences(&[
        (
            "month names, mixed case",
            cron("0 0 1 jan,Jul *", "UTC"),
            "2025-01-15T00:00:00Z",
            &["2025-07-01T00:00:00Z", "2026-01-01T00:00:00Z"],
        ),
        (
            "a day-name range ending on Sunday",
            cron("0 9 * * FRI-SUN", "UTC"),
            "2025-01-06T00:00:00Z",
            &[
                "2025-01-10T09:00:00Z",
                "2025-01-11T09:00:00Z",
                "2025-01-12T09:00:00Z",
                "2025-01-17T09:00:00Z",
            ],
        ),
        (
            "a name and a number in one range",
            cron("0 9 * * 1-wed", "UTC"),
            "2025-01-08T10:00:00Z",
            &["2025-01-13T09:00:00Z", "2025-01-14T09:00:00Z"],
        ),
    ]);
}

#[test]
fn a_start_with_a_step_counts_to_the_end_of_the_field() {
    check_sequences(&[
        (
            "minutes from 5 every 20",
            cron("5/20 * * * *", "UTC"),
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-01T00:05:00Z",
                "2025-01-01T00:25:00Z",
                "2025-01-01T00:45:00Z",
                "2025-01-01T01:05:00Z",
            ],
        ),
        (
            "day-of-week 1/2 stops at Saturday: Monday, Wednesday, Friday, not Sunday",
            cron("0 0 * * 1/2", "UTC"),
            "2025-01-05T12:00:00Z",
            &[
                "2025-01-06T00:00:00Z",
                "2025-01-08T00:00:00Z",
                "2025-01-10T00:00:00Z",
                "2025-01-13T00:00:00Z",
            ],
        ),
        (
            "day-of-week 7/4 starts on Sunday, like 0/4: Sunday and Thursday",
            cron("0 0 * * 7/4", "UTC"),
            "2025-01-01T00:00:00Z",
            &[
                "2025-01-02T00:00:00Z",
                "2025-01-05T00:00:00Z",
                "2025-01-09T00:00:00Z",
            ],
        ),
        (
            "a start at the field's end is that value alone",
            cron("59/15 * * * *", "UTC"),
            "2025-01-01T00:00:00Z",
            &["2025-01-01T00:59:00Z", "2025-01-01T01:59:00Z"],
        ),
    ]);
}

#[test]
fn w_is_the_nearest_weekday_within_the_same_month() {
    check_sequences(&[
        (
            "1W: Saturday 1 June 2024 moves forward to Monday the 3rd, not back into May",
            cron("0 0 1W * *", "UTC"),
            "2024-04-15T00:00:00Z",
            &[
                "2024-05-01T00:00:00Z",
                "2024-06-03T00:00:00Z",
                "2024-07-01T00:00:00Z",
            ],
        ),
        (
            "31W: Sunday 31 March 2024 moves back to Friday the 29th; April's 31st is its 30th",
            cron("0 0 31W * *", "UTC"),
            "2024-03-01T00:00:00Z",
            &[
                "2024-03-29T00:00:00Z",
                "2024-04-30T00:00:00Z",
                "2024-05-31T00:00:00Z",
                "2024-06-28T00:00:00Z",
            ],
        ),
        (
            "15W: a Saturday 15th is the 14th, a Sunday 15th the 16th",
            cron("0 0 15W * *", "UTC"),
            "2024-06-01T00:00:00Z",
            &[
                "2024-06-14T00:00:00Z",
                "2024-07-15T00:00:00Z",
                "2024-08-15T00:00:00Z",
                "2024-09-16T00:00:00Z",
            ],
        ),
        (
            "LW is the last weekday of the month",
            cron("0 0 LW * *", "UTC"),
            "2024-03-01T00:00:00Z",
            &[
                "2024-03-29T00:00:00Z",
                "2024-04-30T00:00:00Z",
                "2024-05-31T00:00:00Z",
                "2024-06-28T00:00:00Z",
            ],
        ),
        (
            "W in a list",
            cron("0 0 1W,15W * *", "UTC"),
            "2024-06-01T00:00:00Z",
            &[
                "2024-06-03T00:00:00Z",
                "2024-06-14T00:00:00Z",
                "2024-07-01T00:00:00Z",
                "2024-07-15T00:00:00Z",
            ],
        ),
        (
            "L in a list with a plain day",
            cron("0 12 15,L * *", "UTC"),
            "2024-02-01T00:00:00Z",
            &[
                "2024-02-15T12:00:00Z",
                "2024-02-29T12:00:00Z",
                "2024-03-15T12:00:00Z",
                "2024-03-31T12:00:00Z",
            ],
        ),
    ]);
}

#[test]
fn a_rare_date_is_found_years_ahead() {
    check_sequences(&[
        (
            "29 February on a Monday (AND: day-of-week starts with *)",
            cron("0 0 29 2 */7,1", "UTC"),
            "2024-03-01T00:00:00Z",
            &["2032-02-29T00:00:00Z", "2044-02-29T00:00:00Z"],
        ),
        (
            "a second within a leap day",
            cron("59 59 23 29 2 *", "UTC"),
            "2024-02-29T23:59:58.5Z",
            &["2024-02-29T23:59:59Z", "2028-02-29T23:59:59Z"],
        ),
    ]);
}
