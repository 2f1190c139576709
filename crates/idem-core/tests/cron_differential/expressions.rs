//! The expressions the differential test compares: a fixed list of edge cases, then random ones
//! from a fixed seed, built to cover `*`, `*/n`, `a-b`, `a-b/n`, `N/step`, lists, names in any case
//! and every combination of the two day fields.

/// Hand-checked cases: the problems a previous differential run found, cronie's lenient corners,
/// and idem's extensions. Each one is also judged by the oracle like the random ones.
pub const EDGE_CASES: &[&str] = &[
    // The day-of-month / day-of-week rule.
    "0 0 */2 * 1",
    "0 0 15 * */1",
    "0 0 *,15 * 1",
    "0 0 1-31 * 1,*/3",
    "0 0 13 * FRI",
    "0 12 1,15 * MON-FRI",
    // Names outside their field.
    "0 0 * MON *",
    "0 0 SAT * *",
    "0 0 * * JAN",
    "SUN * * * *",
    "0 JAN * * *",
    // Names in their field, in any case, in ranges, mixed with numbers.
    "0 0 * jan,Jul,DEC *",
    "0 0 * * mon-FRI",
    "0 0 * * 1-fri",
    "0 0 * * FRI-SUN",
    "0 0 * * 5-0",
    "0 0 * * 7",
    "0 0 * * 0,7",
    "0 0 * * MONDAY",
    "0 0 * January *",
    // Lenient syntax.
    "1,,2 * * * *",
    "+5 * * * *",
    "? ? ? ? ?",
    "0 0 ? * MON",
    "1, * * * *",
    ",1 * * * *",
    "1- * * * *",
    "-1 * * * *",
    "1-2-3 * * * *",
    "*x * * * *",
    "*-5 * * * *",
    "1.5 * * * *",
    "*/ * * * *",
    "*/0 * * * *",
    "1-5/0 * * * *",
    "0x1 * * * *",
    // Out of range.
    "60 * * * *",
    "0 24 * * *",
    "0 0 0 * *",
    "0 0 32 * *",
    "0 0 * 0 *",
    "0 0 * 13 *",
    "0 0 * * 8",
    "0-60 * * * *",
    "1-234/5678 * * * *",
    // Steps.
    "*/100 * * * *",
    "0 */24 * * *",
    "59/15 * * * *",
    "0 0 * * 1/2",
    "0 0 1/10 * *",
    "0 0 * FEB/5 *",
    "0 0 * * */2",
    "0 0 * * 1-7/2",
    "0 0 * * 7/4",
    "0 0 * * FRI-SUN/2",
    "0 0 * * 5-0/2",
    "08 09 * * *",
    // Reversed ranges.
    "50-10 * * * *",
    "0 5-0 * * *",
    "0 0 * NOV-FEB *",
    "0 0 * * 5-1",
    // Dates that never come.
    "0 0 30 2 *",
    "0 0 31 4,6,9,11 *",
    // Nicknames.
    "@daily",
    "@DAILY",
    "@weekly",
    "@reboot",
    "@fortnightly",
    // Extensions and dialects cronie does not have.
    "0 12 L * *",
    "0 12 1,L * *",
    "0 0 1W * *",
    "0 0 15W * *",
    "0 0 30W * *",
    "0 0 31W * *",
    "0 0 1W,15W * *",
    "0 0 LW * *",
    "0 0 * * 5L",
    "0 0 * * 1#2",
    "0~30 * * * *",
    "~ * * * *",
    "H * * * *",
];

/// SplitMix64: tiny, fast and fixed forever, so the expressions never change under us.
pub struct SplitMix(pub u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u32) -> bool {
        self.range(1, 100) <= percent
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One cron field's value range and names.
#[derive(Clone, Copy)]
struct FieldSpec {
    lo: u32,
    hi: u32,
    names: Option<&'static [&'static str]>,
}

const MINUTE: FieldSpec = FieldSpec {
    lo: 0,
    hi: 59,
    names: None,
};
const HOUR: FieldSpec = FieldSpec {
    lo: 0,
    hi: 23,
    names: None,
};
const DOM: FieldSpec = FieldSpec {
    lo: 1,
    hi: 31,
    names: None,
};
const MONTH: FieldSpec = FieldSpec {
    lo: 1,
    hi: 12,
    names: Some(&MONTHS),
};
const DOW: FieldSpec = FieldSpec {
    lo: 0,
    hi: 7,
    names: Some(&DAYS),
};

impl FieldSpec {
    /// A value, spelled as a number or (sometimes) a name in a random case.
    fn value(self, rng: &mut SplitMix, v: u32) -> String {
        match self.names {
            // 7 (Sunday again) stays a number: SUN is 0, and `5-SUN/2` is not `5-7/2` for cronie.
            Some(names) if ((v - self.lo) as usize) < names.len() && rng.chance(35) => {
                let name = names[(v - self.lo) as usize];
                match rng.range(0, 2) {
                    0 => name.to_owned(),
                    1 => name.to_ascii_lowercase(),
                    _ => name[..1].to_owned() + &name[1..].to_ascii_lowercase(),
                }
            }
            _ => v.to_string(),
        }
    }

    /// One list element: a value, a range, a stepped range or star, or a start with a step.
    fn element(self, rng: &mut SplitMix) -> String {
        let span = self.hi - self.lo;
        match rng.range(0, 99) {
            0..=34 => {
                let v = rng.range(self.lo, self.hi);
                self.value(rng, v)
            }
            35..=59 => {
                // a < b: croniter reads an equal range `a-a` as the whole field (a croniter
                // quirk, not cronie's reading), so those are left to the table tests.
                let a = rng.range(self.lo, self.hi - 1);
                let b = rng.range(a + 1, self.hi);
                format!("{}-{}", self.value(rng, a), self.value(rng, b))
            }
            60..=74 => {
                let a = rng.range(self.lo, self.hi - 1);
                let b = rng.range(a + 1, self.hi);
                let step = rng.range(1, b - a + 2);
                format!("{}-{}/{step}", self.value(rng, a), self.value(rng, b))
            }
            75..=91 => format!("*/{}", rng.range(1, span + 3)),
            92..=95 if self.names == Some(&DAYS) => {
                // A range ending on Sunday, spelled 0 or SUN (cronie reads `N-0` as `N-7`).
                let a = rng.range(1, 6);
                format!("{}-{}", self.value(rng, a), self.value(rng, 0))
            }
            _ => {
                let start = rng.range(self.lo, self.hi);
                format!("{}/{}", self.value(rng, start), rng.range(1, span.max(2)))
            }
        }
    }

    /// A restricted field: one element or a short list.
    fn restricted(self, rng: &mut SplitMix) -> String {
        let n = if rng.chance(30) { rng.range(2, 4) } else { 1 };
        (0..n)
            .map(|_| self.element(rng))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `*` with probability `star`, else restricted.
    fn field(self, rng: &mut SplitMix, star: u32) -> String {
        if rng.chance(star) {
            "*".to_owned()
        } else {
            self.restricted(rng)
        }
    }
}

pub fn random_expression(rng: &mut SplitMix) -> String {
    let minute = MINUTE.field(rng, 15);
    let hour = HOUR.field(rng, 30);
    let month = MONTH.field(rng, 55);
    // The day fields together, so that every combination of the day rule is well covered:
    // both `*`; one restricted; both restricted (often one starting with `*`).
    let (dom, dow) = match rng.range(0, 99) {
        0..=19 => ("*".to_owned(), "*".to_owned()),
        20..=44 => (DOM.restricted(rng), "*".to_owned()),
        45..=64 => ("*".to_owned(), DOW.restricted(rng)),
        _ => (DOM.restricted(rng), DOW.restricted(rng)),
    };
    format!("{minute} {hour} {dom} {month} {dow}")
}
