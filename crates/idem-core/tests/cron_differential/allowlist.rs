//! The documented extensions and deliberate differences the differential test allows, each with
//! its reason; the README's "Cron dialect" section lists the same ones.

/// What kind of disagreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One side accepts the expression, the other refuses it.
    Acceptance,
    /// Both accept it, but cronie's value set for some field differs from croniter's (whose sets
    /// the oracle's fires are computed from).
    FieldValues,
    /// The fires differ.
    Fires,
}

/// What the two sides said about one expression.
pub struct Verdict<'a> {
    pub kind: Kind,
    pub expr: &'a str,
    /// idem's refusal message, if it refused.
    pub idem_error: Option<&'a str>,
    pub cronie_valid: bool,
}

/// One documented extension or deliberate difference (mirrored in the README's "Cron dialect").
pub struct Allowed {
    pub name: &'static str,
    pub reason: &'static str,
    pub applies: fn(&Verdict) -> bool,
}

/// The day-of-week field's elements.
fn weekday_elements(expr: &str) -> Vec<&str> {
    fields(expr)
        .get(4)
        .map_or_else(Vec::new, |f| f.split(',').collect())
}

/// The fields of the expression, or none for a nickname.
fn fields(expr: &str) -> Vec<&str> {
    if expr.trim_start().starts_with('@') {
        return Vec::new();
    }
    expr.split_whitespace().collect()
}

/// The comma-separated elements of every field.
fn elements(expr: &str) -> Vec<&str> {
    fields(expr)
        .into_iter()
        .flat_map(|f| f.split(','))
        .collect()
}

fn idem_accepts_cronie_refuses(v: &Verdict) -> bool {
    v.kind == Kind::Acceptance && v.idem_error.is_none() && !v.cronie_valid
}

fn idem_refuses_cronie_accepts(v: &Verdict) -> bool {
    v.kind == Kind::Acceptance && v.idem_error.is_some() && v.cronie_valid
}

pub const ALLOWED: &[Allowed] = &[
    Allowed {
        name: "start/step",
        reason: "`N/step` (a start without a range) is read as `N-max/step`, as croniter and \
                 Quartz do (day-of-week counts to 6, Saturday); cronie refuses it",
        applies: |v| {
            idem_accepts_cronie_refuses(v)
                && elements(v.expr).iter().any(|e| {
                    e.split_once('/')
                        .is_some_and(|(start, _)| start != "*" && !start.contains('-'))
                })
        },
    },
    Allowed {
        name: "L and W",
        reason: "`L` (last day of the month), `NW` (nearest weekday to day N, within the month) \
                 and `LW` in day-of-month are extensions; cronie has neither",
        applies: |v| {
            idem_accepts_cronie_refuses(v)
                && fields(v.expr).get(2).is_some_and(|dom| {
                    dom.split(',')
                        .any(|e| e == "L" || e == "LW" || e.ends_with('W'))
                })
        },
    },
    Allowed {
        name: "nickname case",
        reason: "nicknames are case-insensitive (`@DAILY`); cronie matches them in lower case only",
        applies: |v| {
            idem_accepts_cronie_refuses(v)
                && v.expr.trim().starts_with('@')
                && v.expr.trim() != v.expr.trim().to_ascii_lowercase()
        },
    },
    Allowed {
        name: "reversed range",
        reason: "a range whose start is after its end is refused; cronie accepts it and it \
                 selects nothing, except `N-0`, which cronie reads as `N-7` in every field (idem \
                 only in day-of-week, where 7 is Sunday)",
        applies: |v| {
            idem_refuses_cronie_accepts(v) && v.idem_error.is_some_and(|m| m.contains("reversed"))
        },
    },
    Allowed {
        name: "out-of-range bound",
        reason: "a range bound outside the field is refused even where a step skips it \
                 (`1-234/5678`); cronie checks only the values it sets",
        applies: |v| {
            idem_refuses_cronie_accepts(v) && v.idem_error.is_some_and(|m| m.contains("range"))
        },
    },
    Allowed {
        name: "never fires",
        reason: "an expression that matches no date (`0 0 30 2 *`) is refused; cronie accepts \
                 it and never runs it",
        applies: |v| {
            idem_refuses_cronie_accepts(v) && v.idem_error.is_some_and(|m| m.contains("never"))
        },
    },
    Allowed {
        name: "random pick",
        reason: "cronie's `~` (a random value chosen when the crontab is loaded) is refused: idem \
                 reads the expression afresh on every call, so the pick would not be stable",
        applies: |v| idem_refuses_cronie_accepts(v) && v.expr.contains('~'),
    },
    Allowed {
        name: "Sunday-ended stepped range",
        reason: "in day-of-week, a range ending on Sunday spelled 0 or SUN ends at 7 with a step \
                 too (`FRI-SUN/2` is Friday and Sunday, as croniter reads it); cronie applies \
                 that only without a step, and with one the range selects nothing",
        applies: |v| {
            v.kind == Kind::FieldValues
                && weekday_elements(v.expr).iter().any(|e| {
                    e.split_once('/').is_some_and(|(range, _)| {
                        range.split_once('-').is_some_and(|(a, b)| {
                            a != "0"
                                && !a.eq_ignore_ascii_case("sun")
                                && (b == "0" || b.eq_ignore_ascii_case("sun"))
                        })
                    })
                })
        },
    },
    Allowed {
        name: "@reboot",
        reason: "`@reboot` has no meaning for a scheduler that is not tied to one machine's boot",
        applies: |v| idem_refuses_cronie_accepts(v) && v.expr.trim() == "@reboot",
    },
];
