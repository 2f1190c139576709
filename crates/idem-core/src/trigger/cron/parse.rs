//! The cron dialect's grammar: text to a [`Schedule`], or a message naming the field at fault.
//!
//! Invariant: everything accepted here means exactly one thing, and anything cronie would refuse
//! is refused here too, except the extensions the module doc of [`super`] lists (a seconds field,
//! `N/step`, `L`, `W`, case-insensitive nicknames). A message always names the field and quotes
//! its text, so an API client can tell which of five look-alike fields to fix.

use super::{DaysOfMonth, Schedule};

/// Longer cron expressions are refused outright (a full list of all 60 minutes is ~170 bytes).
const MAX_CRON_LEN: usize = 1_024;

/// The cron nicknames and the 5-field expressions they stand for.
pub(super) const NICKNAMES: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One field of a cron expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        }
    }

    /// The values the field accepts; `*` stands for all of them. Day-of-week has 0 and 7 for
    /// Sunday, as in cronie.
    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }

    /// Where `N/step` stops counting: the field's last value, except that day-of-week stops at
    /// Saturday (6), as croniter does — 7 is only Sunday's second spelling, not a day after
    /// Saturday, so `1/2` is Monday, Wednesday, Friday.
    fn step_end(self) -> u32 {
        match self {
            Field::DayOfWeek => 6,
            _ => self.bounds().1,
        }
    }
}

/// A field's matching values as a bit set (bit `v` for value `v`), plus the day-of-month
/// extensions.
#[derive(Default)]
struct Parsed {
    values: u64,
    days: DaysOfMonth,
}

/// Parses a cron expression: 5 fields, 6 with seconds first, or a nickname.
pub(super) fn parse(expr: &str) -> Result<Schedule, String> {
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
    let texts: Vec<&str> = pattern.split_whitespace().collect();
    let (second, rest) = match texts.len() {
        5 => ("0", &texts[..]),
        6 => (texts[0], &texts[1..]),
        n => {
            return Err(format!(
                "{expr:?} has {n} fields; expected 5 (minute hour day-of-month month \
                 day-of-week) or 6 (with seconds first)"
            ))
        }
    };
    let invalid = |e: String| format!("invalid cron expression {expr:?}: {e}");
    let field = |f: Field, text: &str| parse_field(f, text).map_err(invalid);
    // In the order written, so the first field at fault is the one named.
    let seconds = field(Field::Second, second)?.values;
    let minutes = field(Field::Minute, rest[0])?.values;
    let hours = field(Field::Hour, rest[1])?.values;
    let days = field(Field::DayOfMonth, rest[2])?;
    let months = field(Field::Month, rest[3])?.values;
    let weekdays = field(Field::DayOfWeek, rest[4])?.values;
    let schedule = Schedule {
        seconds,
        minutes,
        hours,
        days_of_month: DaysOfMonth {
            days: days.values,
            ..days.days
        },
        months,
        // 7 is Sunday's other spelling.
        weekdays: (weekdays | (weekdays >> 7)) & 0x7f,
        // cronie's rule (see `man 5 crontab`): when either day field starts with `*`, a day must
        // match both; otherwise either one.
        both_days: rest[2].starts_with('*') || rest[4].starts_with('*'),
    };
    // A search for an expression that matches no date would scan the whole 400-year calendar
    // cycle on every call; refuse it once here with a clear message instead.
    if !schedule.matches_some_date() {
        return Err(format!("{expr:?} never matches any date"));
    }
    Ok(schedule)
}

/// One field: a comma-separated list of elements, none empty.
fn parse_field(field: Field, text: &str) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    for element in text.split(',') {
        parse_element(field, element, &mut parsed)
            .map_err(|e| format!("{} field {text:?}: {e}", field.name()))?;
    }
    Ok(parsed)
}

/// One list element: `*`, `*/step`, `a`, `a-b`, `a-b/step`, `a/step`, or in day-of-month `L`,
/// `LW` and `NW`.
fn parse_element(field: Field, element: &str, out: &mut Parsed) -> Result<(), String> {
    if element.is_empty() {
        return Err("empty list element (a comma with no value beside it)".to_owned());
    }
    refuse_other_dialects(field, element)?;
    if field == Field::DayOfMonth {
        let upper = element.to_ascii_uppercase();
        if upper == "L" {
            out.days.last = true;
            return Ok(());
        }
        if upper == "LW" {
            out.days.last_weekday = true;
            return Ok(());
        }
        if let Some(day) = upper.strip_suffix('W') {
            let day = number(field, day)?;
            out.days.nearest_weekday |= 1 << day;
            return Ok(());
        }
    }
    let (range, step) = match element.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(step)?)),
        None => (element, None),
    };
    let (lo, hi) = if range == "*" {
        field.bounds()
    } else if let Some((a, b)) = range.split_once('-') {
        let (a, mut b) = (value(field, a)?, value(field, b)?);
        if field == Field::DayOfWeek && b == 0 && a > 0 {
            // `FRI-SUN`, `5-0`: a range may end on Sunday spelled 0, as in cronie.
            b = 7;
        }
        if a > b {
            return Err(format!(
                "range {range:?} is reversed (its start is after its end)"
            ));
        }
        (a, b)
    } else {
        let a = value(field, range)?;
        match step {
            // `7/2` in day-of-week starts on Sunday, like `0/2`.
            Some(_) if field == Field::DayOfWeek && a == 7 => (0, field.step_end()),
            Some(_) => (a, field.step_end().max(a)),
            None => (a, a),
        }
    };
    let step = step.unwrap_or(1);
    let mut v = lo;
    while v <= hi {
        out.values |= 1 << v;
        v = match v.checked_add(step) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(())
}

/// Clear refusals for syntax other cron dialects have and this one does not.
fn refuse_other_dialects(field: Field, element: &str) -> Result<(), String> {
    if element.contains('?') {
        return Err("`?` (Quartz's \"no specific value\") is not supported; use `*`".to_owned());
    }
    if element.contains('#') {
        return Err("`#` (the nth weekday of the month) is not supported".to_owned());
    }
    if element.contains('~') {
        return Err(
            "`~` (cronie's random value) is not supported: an expression must mean the same \
             times on every reading"
                .to_owned(),
        );
    }
    let upper = element.to_ascii_uppercase();
    let special = upper == "L"
        || upper == "LW"
        || (upper.ends_with('W') && is_digits(&upper[..upper.len() - 1]))
        || (upper.ends_with('L') && is_digits(&upper[..upper.len() - 1]));
    if special && field != Field::DayOfMonth {
        return Err("`L` and `W` are only accepted in the day-of-month field".to_owned());
    }
    Ok(())
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A step: a positive whole number. One larger than the range is allowed (it selects the first
/// value only), as in cronie.
fn parse_step(text: &str) -> Result<u32, String> {
    if !is_digits(text) {
        return Err(format!(
            "a step must be a positive whole number, got {text:?}"
        ));
    }
    match text.parse::<u32>() {
        Ok(0) => Err("a step must be at least 1".to_owned()),
        Ok(step) => Ok(step),
        Err(_) => Err(format!("step {text} is too large")),
    }
}

/// A decimal number within the field's bounds.
fn number(field: Field, text: &str) -> Result<u32, String> {
    let (lo, hi) = field.bounds();
    if !is_digits(text) {
        return Err(format!("expected a number, got {text:?}"));
    }
    match text.parse::<u32>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(format!("{text} is out of range {lo}-{hi}")),
    }
}

/// A value: a number, or a three-letter name in the field that has names (case-insensitive).
fn value(field: Field, text: &str) -> Result<u32, String> {
    if text.is_empty() {
        return Err("a range needs a value on both sides of `-`".to_owned());
    }
    if !text.bytes().all(|b| b.is_ascii_alphabetic()) {
        return number(field, text);
    }
    let upper = text.to_ascii_uppercase();
    let month = MONTH_NAMES.iter().position(|n| *n == upper);
    let day = DAY_NAMES.iter().position(|n| *n == upper);
    match (field, month, day) {
        (Field::Month, Some(i), _) => Ok(i as u32 + 1),
        (Field::DayOfWeek, _, Some(i)) => Ok(i as u32),
        (_, Some(_), _) => Err(format!(
            "{upper} is a month name; month names are only accepted in the month field"
        )),
        (_, _, Some(_)) => Err(format!(
            "{upper} is a day name; day names are only accepted in the day-of-week field"
        )),
        (Field::Month, None, None) => {
            Err(format!("unknown month name {text:?} (expected JAN to DEC)"))
        }
        (Field::DayOfWeek, None, None) => {
            Err(format!("unknown day name {text:?} (expected SUN to SAT)"))
        }
        _ => Err(format!("expected a number, got {text:?}")),
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
