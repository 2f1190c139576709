//! Cron expressions: the dialect, and the search for the next matching wall-clock second.
//!
//! The dialect is cronie's (`man 5 crontab`), with these extensions:
//! - an optional leading seconds field (6 fields; with 5, second 0);
//! - `N/step` — a start without a range — means `N-max/step`, as croniter and Quartz read it; in
//!   day-of-week it counts to Saturday (6): `1/2` is Monday, Wednesday, Friday;
//! - in day-of-month, `L` (the last day of the month), `NW` (the weekday nearest to day N within
//!   the same month, Quartz's rule: a Saturday moves to the Friday before, a Sunday to the Monday
//!   after, but never across the month's first or last day — Saturday the 1st moves to Monday
//!   the 3rd, a Sunday that ends the month to Friday; in a month shorter than N days, N counts as
//!   the last day, as croniter reads it, so `31W` fires on the last weekday of every month) and
//!   `LW` (the last weekday of the month); they may stand in a list (`1,15,L`);
//! - the nicknames `@yearly @annually @monthly @weekly @daily @midnight @hourly`, in any case.
//!
//! And these deliberate differences: a reversed range (`50-10`) is refused, where cronie accepts
//! it and it selects nothing (except `N-0`, which cronie reads as `N-7` in every field; here only
//! in day-of-week, where `FRI-SUN` and `5-0` end on Sunday); a bound outside its field is refused
//! even where a step skips it (`1-234/5678`); an expression that matches no date (`0 0 30 2 *`)
//! is refused; cronie's `~` (a random pick at load time) and `@reboot` are refused; Quartz's `?`,
//! `#` and day-of-week `L` are refused, and so is anything cronie refuses (`1,,2`, `+5`, a name
//! outside its field).
//!
//! Day of month and day of week combine as in cronie: when either field starts with `*` (`*`,
//! `*/2`, `*,15`), a day must match both; otherwise either one (`0 0 1,15 * MON` fires on the 1st,
//! the 15th and every Monday).
//!
//! Invariant: [`Schedule`] is a pure function of its text, and [`Schedule::next_after`] returns
//! the first matching time strictly after its argument, on a naive (zone-less) wall clock; time
//! zones and DST are the caller's business (`super::wall_clock`).
//!
//! Why not the `croner` crate, which idem used before: its day rule ORs the two day fields unless
//! one is exactly `*` (or always ANDs them), it replaces names textually in every field (so
//! `0 0 * MON *` ran daily), it accepts `1,,2`, `+5` and `?` everywhere, and its `W` crosses month
//! boundaries (`1W` fired on 31 May for June). Wrapping it would have meant parsing every field
//! here anyway, so the grammar and the matcher are ours.

mod parse;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Weekday};

/// A search gives up after this many years: the Gregorian calendar repeats every 400 years
/// (146,097 days, a whole number of weeks), so a date that matches nothing in 400 years never will.
const SEARCH_YEARS: i32 = 401;

/// A parsed cron expression. Each set is a bit mask: bit `v` set when value `v` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days_of_month: DaysOfMonth,
    /// Bits 1-12.
    months: u64,
    /// Bits 0-6, Sunday = 0 (a 7 in the text is folded onto 0).
    weekdays: u64,
    /// cronie's rule: a day must match both day fields (either one starts with `*`), or either.
    both_days: bool,
}

/// The day-of-month field: plain days and the `L` / `W` extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DaysOfMonth {
    /// Bits 1-31.
    days: u64,
    /// `L`: the last day of the month.
    last: bool,
    /// `LW`: the last weekday (Monday to Friday) of the month.
    last_weekday: bool,
    /// `NW` for each bit N: the weekday nearest to day N, within its month.
    nearest_weekday: u64,
}

/// Parses a cron expression (5 or 6 fields, or a nickname); the message says what is wrong and
/// names the field.
pub(crate) fn parse(expr: &str) -> Result<Schedule, String> {
    parse::parse(expr)
}

impl Schedule {
    /// The first whole second strictly after `t` that matches, or `None` if there is none within
    /// 400 years.
    pub(crate) fn next_after(&self, t: NaiveDateTime) -> Option<NaiveDateTime> {
        let start = t
            .with_nanosecond(0)?
            .checked_add_signed(Duration::seconds(1))?;
        let last_year = start.year().checked_add(SEARCH_YEARS)?;
        let mut date = start.date();
        let mut from = start.time();
        while date.year() <= last_year {
            if !has(self.months, date.month()) {
                date = first_of_next_month(date)?;
                from = NaiveTime::MIN;
                continue;
            }
            if self.day_matches(date) {
                if let Some(time) = self.first_time_from(from) {
                    return Some(date.and_time(time));
                }
            }
            date = date.succ_opt()?;
            from = NaiveTime::MIN;
        }
        None
    }

    /// Whether `t` (at whole seconds) matches.
    #[cfg(test)]
    pub(crate) fn matches(&self, t: NaiveDateTime) -> bool {
        has(self.months, t.month())
            && self.day_matches(t.date())
            && has(self.hours, t.hour())
            && has(self.minutes, t.minute())
            && has(self.seconds, t.second())
    }

    /// Whether some date matches: the time fields are never empty, so this is a search from any
    /// fixed point over one whole calendar cycle.
    fn matches_some_date(&self) -> bool {
        let epoch = NaiveDate::from_ymd_opt(2000, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
        epoch.is_some_and(|e| self.next_after(e).is_some())
    }

    /// Whether the day fields accept `date`, by cronie's rule.
    fn day_matches(&self, date: NaiveDate) -> bool {
        let by_month_day = self.days_of_month.matches(date);
        let by_weekday = has(self.weekdays, date.weekday().num_days_from_sunday());
        if self.both_days {
            by_month_day && by_weekday
        } else {
            by_month_day || by_weekday
        }
    }

    /// The first matching time of day at or after `from`.
    fn first_time_from(&self, from: NaiveTime) -> Option<NaiveTime> {
        let (h0, m0, s0) = (from.hour(), from.minute(), from.second());
        let mut h = next_bit(self.hours, h0);
        while let Some(hour) = h {
            let m_start = if hour == h0 { m0 } else { 0 };
            let mut m = next_bit(self.minutes, m_start);
            while let Some(minute) = m {
                let s_start = if hour == h0 && minute == m0 { s0 } else { 0 };
                if let Some(second) = next_bit(self.seconds, s_start) {
                    return NaiveTime::from_hms_opt(hour, minute, second);
                }
                m = next_bit(self.minutes, minute + 1);
            }
            h = next_bit(self.hours, hour + 1);
        }
        None
    }
}

impl DaysOfMonth {
    fn matches(&self, date: NaiveDate) -> bool {
        let day = date.day();
        if has(self.days, day) {
            return true;
        }
        let last = last_day_of_month(date);
        if self.last && day == last {
            return true;
        }
        if self.last_weekday && day == weekday_on_or_before(date.with_day(last), last) {
            return true;
        }
        let mut bits = self.nearest_weekday;
        while bits != 0 {
            // Day N past the month's end counts from the month's last day (`31W` in April is the
            // weekday nearest the 30th), as croniter reads it.
            let n = bits.trailing_zeros().min(last);
            bits &= bits - 1;
            if nearest_weekday(date.with_day(n), n, last) == Some(day) {
                return true;
            }
        }
        false
    }
}

/// The weekday (Monday to Friday) nearest to `target` (day `n` of a month of `last` days),
/// staying within the month: Saturday the 1st moves to Monday the 3rd, a Sunday that ends the
/// month to the Friday before.
fn nearest_weekday(target: Option<NaiveDate>, n: u32, last: u32) -> Option<u32> {
    Some(match target?.weekday() {
        Weekday::Sat if n == 1 => 3,
        Weekday::Sat => n - 1,
        Weekday::Sun if n == last => n - 2,
        Weekday::Sun => n + 1,
        _ => n,
    })
}

/// The last weekday on or before `date` (day `n`), for `LW`.
fn weekday_on_or_before(date: Option<NaiveDate>, n: u32) -> u32 {
    match date.map(|d| d.weekday()) {
        Some(Weekday::Sat) => n - 1,
        Some(Weekday::Sun) => n - 2,
        _ => n,
    }
}

fn has(mask: u64, v: u32) -> bool {
    v < 64 && mask & (1 << v) != 0
}

/// The smallest set bit at or above `from`.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = mask & (u64::MAX << from);
    (rest != 0).then(|| rest.trailing_zeros())
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    let (y, m) = if date.month() == 12 {
        (date.year().checked_add(1)?, 1)
    } else {
        (date.year(), date.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1)
}

fn last_day_of_month(date: NaiveDate) -> u32 {
    first_of_next_month(date)
        .and_then(|d| d.pred_opt())
        .map_or(31, |d| d.day())
}

#[cfg(test)]
mod tests;
