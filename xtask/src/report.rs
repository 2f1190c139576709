//! What a scenario reports: its pass criteria (each PASS or FAIL with what was measured), one JSON
//! line with the oracle's numbers, and a row of the Markdown table printed at the end.
//!
//! Invariant: a report passes only when every criterion passed; the runner's exit code is non-zero
//! when any report did not pass.

use serde::Serialize;
use serde_json::Value;

use crate::oracle::Verdict;

#[derive(Debug, Clone, Serialize)]
pub struct Criterion {
    pub name: String,
    pub pass: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub title: String,
    pub seed: u64,
    pub smoke: bool,
    pub release: bool,
    pub workload: String,
    pub faults: Vec<String>,
    pub lost: usize,
    pub double_committed: usize,
    pub overlapping: usize,
    pub re_executed_attempts: usize,
    pub fence_rejections: u64,
    pub recovery_max_ms: Option<f64>,
    pub recovery_p99_ms: Option<f64>,
    /// Scenario-specific measurements (lateness, kill-to-reclaim times, ...).
    pub extra: Value,
    pub criteria: Vec<Criterion>,
    pub pass: bool,
    pub duration_s: f64,
    pub run_dir: String,
    /// Set when the scenario could not run to its end.
    pub error: Option<String>,
}

impl Report {
    pub fn new(scenario: &str, title: &str, seed: u64, smoke: bool, release: bool) -> Report {
        Report {
            scenario: scenario.to_owned(),
            title: title.to_owned(),
            seed,
            smoke,
            release,
            workload: String::new(),
            faults: Vec::new(),
            lost: 0,
            double_committed: 0,
            overlapping: 0,
            re_executed_attempts: 0,
            fence_rejections: 0,
            recovery_max_ms: None,
            recovery_p99_ms: None,
            extra: Value::Null,
            criteria: Vec::new(),
            pass: false,
            duration_s: 0.0,
            run_dir: String::new(),
            error: None,
        }
    }

    /// Records a criterion and prints it.
    pub fn check(&mut self, name: &str, pass: bool, detail: impl Into<String>) {
        let detail = detail.into();
        println!(
            "  [{}] {} {name}: {detail}",
            self.scenario,
            if pass { "PASS" } else { "FAIL" }
        );
        self.criteria.push(Criterion {
            name: name.to_owned(),
            pass,
            detail,
        });
    }

    /// Takes the oracle's numbers and checks the three violations (each must be zero).
    pub fn verdict(&mut self, v: &Verdict, expect_overlap_free: bool) {
        self.lost = v.lost.len();
        self.double_committed = v.double_committed.len();
        self.overlapping = v.overlapping.len();
        self.re_executed_attempts = v.re_executed_attempts;
        self.check(
            "0 lost",
            v.lost.is_empty(),
            summary(v.accepted_keys, &v.lost, "accepted keys"),
        );
        self.check(
            "0 double-committed",
            v.double_committed.is_empty(),
            summary(v.tasks, &v.double_committed, "tasks"),
        );
        if expect_overlap_free {
            self.check(
                "0 overlapping attempts",
                v.overlapping.is_empty(),
                summary(v.deliveries, &v.overlapping, "deliveries"),
            );
        }
        if !v.anomalies.is_empty() {
            println!(
                "  [{}] note: {} anomalies, first: {}",
                self.scenario,
                v.anomalies.len(),
                v.anomalies
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }

    pub fn recovery(&mut self, values_ms: &[f64]) {
        if let Some((max, p99)) = crate::oracle::max_p99(values_ms) {
            self.recovery_max_ms = Some(max.round());
            self.recovery_p99_ms = Some(p99.round());
        }
    }

    pub fn finish(&mut self) {
        self.pass = self.error.is_none()
            && !self.criteria.is_empty()
            && self.criteria.iter().all(|c| c.pass);
    }

    /// The one JSON line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn summary(of: usize, problems: &[String], what: &str) -> String {
    if problems.is_empty() {
        format!("none among {of} {what}")
    } else {
        let first: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
        format!(
            "{} among {of} {what}; first: {}",
            problems.len(),
            first.join(" | ")
        )
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "—".into())
}

/// The Markdown table of some reports.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| scenario | workload | faults injected | lost | double | overlapping | re-executed | fence rejections | recovery max / p99 (ms) | result |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let result = if r.pass {
            "PASS".to_owned()
        } else {
            let failed: Vec<&str> = r
                .criteria
                .iter()
                .filter(|c| !c.pass)
                .map(|c| c.name.as_str())
                .collect();
            match &r.error {
                Some(e) => format!("FAIL (error: {})", e.lines().next().unwrap_or_default()),
                None => format!("FAIL ({})", failed.join("; ")),
            }
        };
        out.push_str(&format!(
            "| {} {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
            r.scenario,
            r.title,
            r.workload,
            r.faults.join(", "),
            r.lost,
            r.double_committed,
            r.overlapping,
            r.re_executed_attempts,
            r.fence_rejections,
            ms(r.recovery_max_ms),
            ms(r.recovery_p99_ms),
            result
        ));
    }
    out
}
