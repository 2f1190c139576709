//! Helpers shared by the trigger tests: instants from RFC 3339 text, trigger builders, and a
//! check that a trigger fires at exactly the listed instants.

use chrono::{DateTime, Utc};

use super::Trigger;

pub(crate) fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad test time {s}: {e}"))
        .with_timezone(&Utc)
}

pub(crate) fn cron(expr: &str, timezone: &str) -> Trigger {
    Trigger::Cron {
        expr: expr.to_owned(),
        timezone: timezone.to_owned(),
        start_at: None,
        end_at: None,
    }
}

pub(crate) fn interval(every: f64, start: Option<&str>, end: Option<&str>) -> Trigger {
    Trigger::Interval {
        every_seconds: every,
        start_at: start.map(at),
        end_at: end.map(at),
    }
}

pub(crate) fn fires(trigger: &Trigger, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
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

pub(crate) fn check_sequences(cases: &[(&str, Trigger, &str, &[&str])]) {
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
