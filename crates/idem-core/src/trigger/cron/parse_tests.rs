//! The grammar's refusals: each names the field and says what is wrong.

use super::parse;

/// Asserts that every expression is refused with a message containing each needle.
fn assert_refused(cases: &[(&str, &[&str])]) {
    for (expr, needles) in cases {
        match parse(expr) {
            Ok(s) => panic!("{expr:?} was accepted as {s:?}"),
            Err(e) => {
                for needle in *needles {
                    assert!(e.contains(needle), "{expr:?}: {e:?} lacks {needle:?}");
                }
            }
        }
    }
}

#[test]
fn names_are_refused_outside_their_field_naming_the_field() {
    assert_refused(&[
        (
            "0 0 * MON *",
            &[
                "month field \"MON\"",
                "MON is a day name; day names are only accepted in the day-of-week field",
            ],
        ),
        (
            "0 0 SAT * *",
            &["day-of-month field \"SAT\"", "SAT is a day name"],
        ),
        (
            "0 0 * * JAN",
            &[
                "day-of-week field \"JAN\"",
                "JAN is a month name; month names are only accepted in the month field",
            ],
        ),
        ("SUN * * * *", &["minute field \"SUN\"", "day name"]),
        (
            "0 jan * * *",
            &["hour field \"jan\"", "JAN is a month name"],
        ),
        ("mon 0 0 * * *", &["second field \"mon\"", "day name"]),
        (
            "0 0 * 1-DEC MON-JUN",
            &["day-of-week field \"MON-JUN\"", "JUN is a month name"],
        ),
        (
            "0 0 * * MONDAY",
            &["unknown day name \"MONDAY\" (expected SUN to SAT)"],
        ),
        (
            "0 0 * January *",
            &["unknown month name \"January\" (expected JAN to DEC)"],
        ),
        (
            "0 0 * * */MON",
            &["a step must be a positive whole number, got \"MON\""],
        ),
    ]);
}

#[test]
fn lenient_syntax_cronie_refuses_is_refused() {
    assert_refused(&[
        (
            "1,,2 * * * *",
            &["minute field \"1,,2\": empty list element"],
        ),
        ("1, * * * *", &["minute field \"1,\": empty list element"]),
        (",1 * * * *", &["empty list element"]),
        (
            "+5 * * * *",
            &["minute field \"+5\": expected a number, got \"+5\""],
        ),
        ("? ? ? ? ?", &["minute field \"?\"", "`?`", "use `*`"]),
        ("0 0 ? * MON", &["day-of-month field \"?\""]),
        ("-1 * * * *", &["a range needs a value on both sides"]),
        ("1- * * * *", &["a range needs a value on both sides"]),
        ("1-2-3 * * * *", &["expected a number, got \"2-3\""]),
        ("*x * * * *", &["expected a number, got \"*x\""]),
        ("*-5 * * * *", &["expected a number, got \"*\""]),
        ("1.5 * * * *", &["expected a number, got \"1.5\""]),
        ("0x1 * * * *", &["expected a number, got \"0x1\""]),
        (
            "*/ * * * *",
            &["a step must be a positive whole number, got \"\""],
        ),
        (
            "*/0 * * * *",
            &["minute field \"*/0\": a step must be at least 1"],
        ),
        ("1-5/0 * * * *", &["a step must be at least 1"]),
        ("*/99999999999 * * * *", &["step 99999999999 is too large"]),
    ]);
}

#[test]
fn values_outside_their_field_and_reversed_ranges_are_refused() {
    assert_refused(&[
        (
            "60 * * * *",
            &["minute field \"60\": 60 is out of range 0-59"],
        ),
        (
            "0 24 * * *",
            &["hour field \"24\": 24 is out of range 0-23"],
        ),
        (
            "0 0 0 * *",
            &["day-of-month field \"0\": 0 is out of range 1-31"],
        ),
        ("0 0 32 * *", &["32 is out of range 1-31"]),
        ("0 0 * 0 *", &["month field \"0\": 0 is out of range 1-12"]),
        ("0 0 * 13 *", &["13 is out of range 1-12"]),
        (
            "0 0 * * 8",
            &["day-of-week field \"8\": 8 is out of range 0-7"],
        ),
        ("60 * * * * *", &["second field \"60\""]),
        ("1-234/5678 * * * *", &["234 is out of range 0-59"]),
        ("0 0 32W * *", &["32 is out of range 1-31"]),
        ("99999999999 * * * *", &["99999999999 is out of range 0-59"]),
        (
            "50-10 * * * *",
            &["minute field \"50-10\": range \"50-10\" is reversed"],
        ),
        ("0 5-0 * * *", &["hour field \"5-0\"", "reversed"]),
        ("0 0 * NOV-FEB *", &["month field \"NOV-FEB\"", "reversed"]),
        ("0 0 * * 5-1", &["day-of-week field \"5-1\"", "reversed"]),
    ]);
}

#[test]
fn other_dialects_syntax_is_refused_with_a_reason() {
    assert_refused(&[
        (
            "0 0 * * 1#2",
            &["day-of-week field \"1#2\"", "`#` (the nth weekday"],
        ),
        (
            "0 0 * * 5L",
            &[
                "day-of-week field \"5L\"",
                "only accepted in the day-of-month",
            ],
        ),
        (
            "L * * * *",
            &["minute field \"L\"", "only accepted in the day-of-month"],
        ),
        (
            "0 0 * 1W *",
            &["month field \"1W\"", "only accepted in the day-of-month"],
        ),
        (
            "0~30 * * * *",
            &["minute field \"0~30\"", "`~` (cronie's random value)"],
        ),
        (
            "H * * * *",
            &["minute field \"H\": expected a number, got \"H\""],
        ),
        ("0 0 L-5 * *", &["expected a number, got \"L\""]),
        ("@reboot", &["unknown nickname \"@reboot\""]),
        ("@fortnightly", &["unknown nickname", "@hourly"]),
    ]);
}

#[test]
fn the_shape_of_the_expression_is_checked_before_its_fields() {
    assert_refused(&[
        ("", &["must not be empty"]),
        ("   ", &["must not be empty"]),
        ("* * * *", &["has 4 fields; expected 5"]),
        ("0 0 0 * * * *", &["has 7 fields"]),
        ("0 0 * * é", &["ASCII"]),
        ("0 0 30 2 *", &["never matches any date"]),
        ("0 0 31 4,6,9,11 *", &["never matches any date"]),
        ("0 0 30,31 FEB */2", &["never matches any date"]),
    ]);
    let long = format!("{} * * * *", vec!["1"; 600].join(","));
    assert_refused(&[(&long, &["at most 1024"])]);
}

#[test]
fn accepted_spellings_parse_to_the_same_schedule() {
    let same: &[(&str, &str)] = &[
        ("0 0 * * 7", "0 0 * * 0"),
        ("0 0 * * SUN", "0 0 * * 0"),
        ("0 0 * * FRI-SUN", "0 0 * * 5,6,0"),
        ("0 0 * * 5-0", "0 0 * * 5-7"),
        ("0 0 * * mon-Fri", "0 0 * * 1-5"),
        ("0 0 * * 1-7/2", "0 0 * * 1,3,5,0"),
        ("0 0 * * 1/2", "0 0 * * 1,3,5"),
        ("0 0 * * 7/4", "0 0 * * 0,4"),
        ("0 0 * * FRI-SUN/2", "0 0 * * 5,0"),
        ("0 0 * * */2", "0 0 * * 0,2,4,6"),
        ("0 0 * jan,Feb,DEC *", "0 0 * 1,2,12 *"),
        ("0 0 * FEB/5 *", "0 0 * 2,7,12 *"),
        ("5-5 * * * *", "5 * * * *"),
        ("08 09 * * *", "8 9 * * *"),
        ("59/15 * * * *", "59 * * * *"),
        ("*/100 * * * *", "0 * * * *"),
        ("*/25 * * * *", "0,25,50 * * * *"),
        ("0 0 1/10 * *", "0 0 1,11,21,31 * *"),
        ("0 0 * * *", "0 0 0 * * *"),
        ("@daily", "0 0 * * *"),
        ("@WEEKLY", "0 0 * * 0"),
        ("\t0  0 * *\t* ", "0 0 * * *"),
    ];
    for (a, b) in same {
        assert_eq!(
            parse(a).unwrap_or_else(|e| panic!("{a:?}: {e}")),
            parse(b).unwrap_or_else(|e| panic!("{b:?}: {e}")),
            "{a:?} and {b:?}"
        );
    }
}
