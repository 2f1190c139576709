//! Differential test of idem's cron against croniter 7 read with cronie's day-of-month /
//! day-of-week rule (the oracle is `cron_differential.py` beside this file; its doc says why the
//! day rule is applied there rather than taken from croniter's `implement_cron_bug`).
//!
//! Invariant: every disagreement between idem and the oracle — a different fire, or an
//! expression one side accepts and the other refuses — is either a bug or matches exactly one
//! entry of [`ALLOWED`], each a documented extension or deliberate difference that the README's
//! "Cron dialect" section lists too. Every entry must be needed by at least one case, so the list
//! cannot go stale.
//!
//! The expressions are random but reproducible (a fixed seed, a hand-rolled SplitMix64 so the
//! stream never changes with a dependency), plus a fixed list of edge and malformed cases. Fires
//! are compared in UTC and in Asia/Tokyo, which has had no DST since 1951, so no comparison
//! crosses a DST change (those have their own table tests next to the code).
//!
//! Skipped (with a message) when `python3 -c "import croniter"` fails, unless
//! `IDEM_TEST_REQUIRE_SERVICES=1`, as in CI, which installs croniter 7.0.0.

use std::io::Write;
use std::process::{Child, Command, Stdio};

#[path = "cron_differential/allowlist.rs"]
mod allowlist;
#[path = "cron_differential/expressions.rs"]
mod expressions;

use chrono::{DateTime, Duration, Utc};
use idem_core::Trigger;
use serde_json::{json, Value};

use allowlist::{Kind, Verdict, ALLOWED};
use expressions::{random_expression, SplitMix, EDGE_CASES};

const SEED: u64 = 0x1de3_c0de_2025_0001;
const RANDOM_EXPRESSIONS: usize = 3_500;
const FIRES_PER_START: usize = 10;
/// Fires further than this after a start are not compared (about 30 years).
const HORIZON_DAYS: i64 = 30 * 365;
const STARTS: [&str; 3] = [
    "2024-02-28T23:59:30Z",
    "2025-06-15T08:47:13.5Z",
    "2026-12-31T22:00:00Z",
];
const ZONES: [&str; 2] = ["UTC", "Asia/Tokyo"];

// ---------------------------------------------------------------------------------------------
// idem's side

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad instant {s}: {e}"))
        .with_timezone(&Utc)
}

fn cron(expr: &str, zone: &str) -> Trigger {
    Trigger::Cron {
        expr: expr.to_owned(),
        timezone: zone.to_owned(),
        start_at: None,
        end_at: None,
    }
}

/// idem's next fires after `start`, up to `FIRES_PER_START`, none past the horizon.
fn idem_fires(trigger: &Trigger, start: DateTime<Utc>) -> Vec<String> {
    let horizon = start + Duration::days(HORIZON_DAYS);
    let mut out = Vec::new();
    let mut next = trigger.next_after(start);
    while let Some(t) = next {
        if out.len() == FIRES_PER_START || t > horizon {
            break;
        }
        out.push(t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        next = trigger.next_after(t);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The test

fn croniter_available() -> bool {
    Command::new("python3")
        .args(["-c", "import croniter"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts the oracle on `request`; [`oracle_answer`] collects its reply. In between, idem's side
/// runs on the other core.
fn start_oracle(request: &Value) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cron_differential.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs");
    // The oracle reads all of its input before it writes anything, so writing first cannot
    // deadlock on a full pipe; dropping the handle closes its stdin.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("request written");
    child
}

fn oracle_answer(child: Child) -> Value {
    let output = child.wait_with_output().expect("oracle finishes");
    assert!(output.status.success(), "oracle failed: {}", output.status);
    serde_json::from_slice(&output.stdout).expect("oracle answers JSON")
}

/// idem's side of one case: its verdict, and its fires from each start if it accepts.
struct IdemSide {
    error: Option<String>,
    fires: Vec<Vec<String>>,
}

#[test]
fn cron_agrees_with_croniter_read_as_cronie_except_documented_differences() {
    if !croniter_available() {
        if std::env::var("IDEM_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("croniter is required (pip install croniter==7.0.0)");
        }
        println!("skipped: croniter not installed");
        return;
    }

    let mut rng = SplitMix(SEED);
    let mut exprs: Vec<String> = EDGE_CASES.iter().map(|e| (*e).to_owned()).collect();
    exprs.extend((0..RANDOM_EXPRESSIONS).map(|_| random_expression(&mut rng)));

    let cases: Vec<Value> = exprs
        .iter()
        .flat_map(|expr| {
            ZONES.iter().map(move |zone| {
                json!({"expr": expr, "zone": zone, "starts": STARTS, "count": FIRES_PER_START,
                       "horizon_days": HORIZON_DAYS, "native_check": *zone == ZONES[0]})
            })
        })
        .collect();
    let clock = std::time::Instant::now();
    let oracle = start_oracle(&json!({ "cases": cases }));

    let now = at("2024-01-01T00:00:00Z");
    let starts: Vec<DateTime<Utc>> = STARTS.iter().map(|s| at(s)).collect();
    let idem_sides: Vec<IdemSide> = cases
        .iter()
        .map(|case| {
            let trigger = cron(
                case["expr"].as_str().expect("expr"),
                case["zone"].as_str().expect("zone"),
            );
            let error = trigger.clone().normalize(now).err().map(|e| e.message);
            let fires = match error {
                None => starts.iter().map(|s| idem_fires(&trigger, *s)).collect(),
                Some(_) => Vec::new(),
            };
            IdemSide { error, fires }
        })
        .collect();
    let idem_took = clock.elapsed();
    let reply = oracle_answer(oracle);
    let both_took = clock.elapsed();
    let answers = reply["answers"].as_array().expect("answers");
    assert_eq!(answers.len(), cases.len());
    let mut used = vec![0usize; ALLOWED.len()];
    let mut unexplained: Vec<String> = Vec::new();
    let mut disagreeing: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let (mut fire_comparisons, mut sequences, mut both_refuse) = (0usize, 0usize, 0usize);

    for ((case, answer), idem) in cases.iter().zip(answers).zip(&idem_sides) {
        let expr = case["expr"].as_str().expect("expr");
        let zone = case["zone"].as_str().expect("zone");
        let idem_error = &idem.error;
        let cronie_valid = answer["cronie_valid"].as_bool().expect("cronie_valid");
        let verdict = |kind| Verdict {
            kind,
            expr,
            idem_error: idem_error.as_deref(),
            cronie_valid,
        };
        let allowed = |kind| ALLOWED.iter().position(|a| (a.applies)(&verdict(kind)));

        // Acceptance does not depend on the zone: judged once per expression.
        let first_zone = zone == ZONES[0];
        if first_zone && idem_error.is_none() != cronie_valid {
            match allowed(Kind::Acceptance) {
                Some(i) => used[i] += 1,
                None => {
                    disagreeing.insert(expr);
                    unexplained.push(format!(
                        "{expr:?} in {zone}: idem {}, cronie {}",
                        idem_error
                            .as_deref()
                            .map_or("accepts".to_owned(), |m| format!("refuses ({m})")),
                        answer["cronie_error"]
                            .as_str()
                            .map_or("accepts".to_owned(), |m| format!("refuses ({m})")),
                    ));
                }
            }
        } else if first_zone && idem_error.is_some() {
            both_refuse += 1;
        }

        let (None, Some(expected)) = (idem_error, answer["fires"].as_array()) else {
            continue;
        };
        if first_zone && answer["fields_agree"] == json!(false) {
            match allowed(Kind::FieldValues) {
                Some(i) => used[i] += 1,
                None => {
                    disagreeing.insert(expr);
                    unexplained.push(format!(
                        "{expr:?}: croniter's field values differ from cronie's; the oracle's \
                         fires (from croniter's) are not cronie's"
                    ));
                    continue;
                }
            }
        }
        for ((start, expected), got) in starts.iter().zip(expected).zip(&idem.fires) {
            let expected: Vec<String> = serde_json::from_value(expected.clone()).expect("fires");
            sequences += 1;
            fire_comparisons += expected.len().max(got.len());
            if *got != expected {
                if let Some(i) = allowed(Kind::Fires) {
                    used[i] += 1;
                    continue;
                }
                disagreeing.insert(expr);
                let first = got.iter().zip(&expected).position(|(a, b)| a != b);
                unexplained.push(format!(
                    "{expr:?} in {zone} after {start}: idem {got:?}, oracle {expected:?} \
                     (first difference at {first:?})"
                ));
            }
        }
    }

    let stats = &reply["stats"];
    println!("cron differential: idem {idem_took:.1?}, oracle (alongside) {both_took:.1?}");
    println!(
        "cron differential: {} expressions ({} random + {} edge) x {} zones x {} starts: \
         {sequences} fire sequences, {fire_comparisons} fires compared, {both_refuse} refused \
         by both; croniter's own implement_cron_bug reading differed from cronie's on {} of {} \
         checked (e.g. {})",
        exprs.len(),
        RANDOM_EXPRESSIONS,
        EDGE_CASES.len(),
        ZONES.len(),
        STARTS.len(),
        stats["native_disagree"],
        stats["native_checked"],
        stats["native_examples"],
    );
    for (allowed, n) in ALLOWED.iter().zip(&used) {
        println!("  allowed {:>4} x {}: {}", n, allowed.name, allowed.reason);
    }
    println!(
        "  unexplained disagreements: {} in {} expressions",
        unexplained.len(),
        disagreeing.len()
    );
    for u in unexplained.iter().take(40) {
        println!("    {u}");
    }
    assert!(
        unexplained.is_empty(),
        "{} disagreements with the oracle (first ones above)",
        unexplained.len()
    );
    let stale: Vec<&str> = ALLOWED
        .iter()
        .zip(&used)
        .filter(|(_, n)| **n == 0)
        .map(|(a, _)| a.name)
        .collect();
    assert!(
        stale.is_empty(),
        "allowlist entries no case needs: {stale:?}"
    );
    assert!(
        exprs.len() >= 3_000 && fire_comparisons >= 100_000,
        "too small: {} expressions, {fire_comparisons} fires",
        exprs.len()
    );
}
