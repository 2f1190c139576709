//! The oracle: judges one run from the client's history, the receiver's deliveries and the store's
//! own records.
//!
//! - **Lost**: a key the API accepted (202, or 200 replay) whose task never completed: no task has
//!   the key, the task did not end in the expected final state, or (for `http` tasks) the receiver
//!   never got an answered request from the attempt the store recorded as the successful one.
//! - **Double-committed**: two recorded completions for one task or one fire slot: two tasks for
//!   one key (a submission key or a fire key `job:{id}:{slot}`), two answers naming different tasks
//!   for one key, two history rows for one slot, a final state that later changed (the watcher),
//!   or a committed result that came from another attempt than the one the store says succeeded
//!   (the receiver echoes the attempt in its answer, so the stored result names its attempt).
//! - **Overlapping**: two attempts of one task in flight at the receiver at once (intervals of
//!   different `Idem-Attempt` for one `Idem-Task-Id` that intersect).
//! - **Re-executed attempts**: deliveries beyond the first of each task; expected under faults
//!   (at-least-once delivery), reported, not failed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::client::Op;
use crate::receiver::Delivery;
use crate::store::{RunRow, TaskRow};

/// What the oracle found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Verdict {
    pub accepted_keys: usize,
    pub tasks: usize,
    pub deliveries: usize,
    pub lost: Vec<String>,
    pub double_committed: Vec<String>,
    pub overlapping: Vec<String>,
    pub re_executed_attempts: usize,
    /// Tasks that ran more than one attempt (store).
    pub retried_tasks: usize,
    /// Oddities that are not one of the three violations but deserve a look.
    pub anomalies: Vec<String>,
}

/// What a scenario expects of its tasks.
pub struct Expect<'a> {
    /// The final state every accepted key's task must reach (`succeeded` unless listed in
    /// `final_states`).
    pub final_states: &'a HashMap<String, &'static str>,
    /// Whether tasks are `http` calls to the receiver (then the successful attempt must have
    /// reached it, and its stored result must echo that attempt).
    pub http: bool,
}

/// Judges a run.
pub fn judge(
    history: &[Op],
    deliveries: &[Delivery],
    tasks: &[TaskRow],
    runs: &[RunRow],
    final_changes: &[String],
    expect: &Expect<'_>,
) -> Verdict {
    let mut v = Verdict {
        tasks: tasks.len(),
        deliveries: deliveries.len(),
        ..Verdict::default()
    };

    // Tasks by key.
    let mut by_key: BTreeMap<&str, Vec<&TaskRow>> = BTreeMap::new();
    for t in tasks {
        if let Some(k) = &t.key {
            by_key.entry(k.as_str()).or_default().push(t);
        }
        if t.attempts > 1 {
            v.retried_tasks += 1;
        }
    }
    for (k, ts) in &by_key {
        if ts.len() > 1 {
            let ids: Vec<&str> = ts.iter().map(|t| t.id.as_str()).collect();
            v.double_committed
                .push(format!("key {k} has {} tasks: {ids:?}", ts.len()));
        }
    }

    // Deliveries by task.
    let mut by_task: HashMap<&str, Vec<&Delivery>> = HashMap::new();
    for d in deliveries {
        by_task.entry(d.task_id.as_str()).or_default().push(d);
    }
    v.re_executed_attempts = deliveries.len() - by_task.len();

    // Accepted keys: each must have completed once.
    let mut answered: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for op in history {
        if op.outcome.accepted() {
            if let Some(id) = &op.task_id {
                answered.entry(op.key.as_str()).or_default().insert(id);
            }
        }
    }
    v.accepted_keys = answered.len();
    for (key, ids) in &answered {
        if ids.len() > 1 {
            v.double_committed
                .push(format!("key {key}: the API answered with tasks {ids:?}"));
        }
        let want = expect
            .final_states
            .get(*key)
            .copied()
            .unwrap_or("succeeded");
        let Some(t) = by_key.get(key).and_then(|ts| ts.first()) else {
            v.lost
                .push(format!("key {key}: accepted as {ids:?}, no task has it"));
            continue;
        };
        if !ids.contains(t.id.as_str()) {
            v.double_committed.push(format!(
                "key {key}: the API answered {ids:?}, the store has {}",
                t.id
            ));
        }
        if t.state != want {
            v.lost.push(format!(
                "key {key}: task {} is {} after {} attempts (error {:?}), expected {want}",
                t.id, t.state, t.attempts, t.error_kind
            ));
            continue;
        }
        if expect.http && want == "succeeded" {
            let reached = by_task.get(t.id.as_str()).is_some_and(|ds| {
                ds.iter()
                    .any(|d| d.answered && d.attempt == i64::from(t.attempts))
            });
            if !reached {
                v.lost.push(format!(
                    "key {key}: task {} succeeded with attempt {}, which never got an answer from \
                     the receiver",
                    t.id, t.attempts
                ));
            }
        }
    }

    // Stored results name their attempt.
    if expect.http {
        for t in tasks.iter().filter(|t| t.state == "succeeded") {
            let echoed = t
                .result
                .as_ref()
                .and_then(|r| r["body"]["attempt"].as_i64());
            match echoed {
                Some(a) if a != i64::from(t.attempts) => v.double_committed.push(format!(
                    "task {}: succeeded as attempt {}, but its stored result is attempt {a}'s",
                    t.id, t.attempts
                )),
                Some(_) => {}
                None => v.anomalies.push(format!(
                    "task {}: succeeded without the receiver's answer in its result: {:?}",
                    t.id, t.result
                )),
            }
        }
    }

    // Fire slots: one history row and one task each.
    let mut slots: BTreeMap<(&str, i64), usize> = BTreeMap::new();
    let mut fired_tasks: BTreeSet<&str> = BTreeSet::new();
    for r in runs {
        *slots
            .entry((r.job_id.as_str(), r.scheduled_at.timestamp_millis()))
            .or_default() += 1;
        if let Some(t) = &r.task_id {
            fired_tasks.insert(t);
        }
    }
    for ((job, at), n) in &slots {
        if *n > 1 {
            v.double_committed
                .push(format!("job {job}: slot {at} has {n} history rows"));
        }
    }
    for t in tasks.iter().filter(|t| t.job_id.is_some()) {
        if !fired_tasks.contains(t.id.as_str()) {
            v.double_committed.push(format!(
                "task {} of job {:?} (key {:?}) has no fired history row",
                t.id, t.job_id, t.key
            ));
        }
    }

    v.double_committed.extend(final_changes.iter().cloned());

    // Overlapping attempts, and attempts delivered twice.
    let mut ids: Vec<&&str> = by_task.keys().collect();
    ids.sort();
    for id in ids {
        let ds = &by_task[*id];
        let mut attempts_seen: BTreeMap<i64, usize> = BTreeMap::new();
        for d in ds {
            *attempts_seen.entry(d.attempt).or_default() += 1;
        }
        for (a, n) in &attempts_seen {
            if *n > 1 {
                v.anomalies.push(format!(
                    "task {id}: attempt {a} reached the receiver {n} times"
                ));
            }
        }
        let mut pairs = Vec::new();
        for (i, a) in ds.iter().enumerate() {
            for b in &ds[i + 1..] {
                if a.attempt != b.attempt && a.start_ms < b.end_ms && b.start_ms < a.end_ms {
                    pairs.push(format!(
                        "attempt {} [{:.0}, {:.0}] ms and attempt {} [{:.0}, {:.0}] ms",
                        a.attempt, a.start_ms, a.end_ms, b.attempt, b.start_ms, b.end_ms
                    ));
                }
            }
        }
        if !pairs.is_empty() {
            v.overlapping
                .push(format!("task {id}: {}", pairs.join("; ")));
        }
    }

    // Deliveries of tasks the store does not have.
    let known: BTreeSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    let strays = by_task.keys().filter(|id| !known.contains(**id)).count();
    if strays > 0 {
        v.anomalies
            .push(format!("{strays} delivered task ids are not in the store"));
    }
    v
}

/// Counts of the history's outcomes.
pub fn outcome_counts(history: &[Op]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for op in history {
        let name = serde_json::to_value(op.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *out.entry(name).or_default() += 1;
    }
    out
}

/// `(max, p99)` of some durations in ms; `None` when there are none.
pub fn max_p99(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let max = *v.last().unwrap();
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    let p99 = v[rank.clamp(1, v.len()) - 1];
    Some((max, p99))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Outcome;
    use serde_json::json;

    fn delivery(task: &str, attempt: i64, start: f64, end: f64) -> Delivery {
        Delivery {
            key: "k".into(),
            task_id: task.into(),
            attempt,
            body: json!({}),
            start_ms: start,
            end_ms: end,
            answered: true,
        }
    }

    fn task(id: &str, key: &str, attempts: i32) -> TaskRow {
        TaskRow {
            id: id.into(),
            key: Some(key.into()),
            state: "succeeded".into(),
            attempts,
            job_id: None,
            result: Some(json!({"status": 200, "body": {"attempt": attempts}})),
            error_kind: None,
        }
    }

    fn accepted(key: &str, id: &str) -> Op {
        Op {
            key: key.into(),
            api: 0,
            variant: 0,
            sent_ms: 0.0,
            done_ms: 1.0,
            status: Some(202),
            outcome: Outcome::Created,
            task_id: Some(id.into()),
            replayed_header: false,
            error: None,
        }
    }

    #[test]
    fn intersecting_attempts_overlap_and_touching_ones_do_not() {
        let finals = HashMap::new();
        let expect = Expect {
            final_states: &finals,
            http: true,
        };
        let tasks = [task("t1", "k1", 2), task("t2", "k2", 2)];
        let ds = [
            delivery("t1", 1, 0.0, 100.0),
            delivery("t1", 2, 50.0, 150.0),
            delivery("t2", 1, 0.0, 100.0),
            delivery("t2", 2, 100.0, 200.0),
        ];
        let h = [accepted("k1", "t1"), accepted("k2", "t2")];
        let v = judge(&h, &ds, &tasks, &[], &[], &expect);
        assert_eq!(v.overlapping.len(), 1, "{:?}", v.overlapping);
        assert!(v.overlapping[0].starts_with("task t1"));
        assert_eq!(v.re_executed_attempts, 2);
        assert!(v.lost.is_empty() && v.double_committed.is_empty());
    }

    #[test]
    fn an_accepted_key_without_a_completed_task_is_lost() {
        let finals = HashMap::new();
        let expect = Expect {
            final_states: &finals,
            http: true,
        };
        let mut failed = task("t1", "k1", 1);
        failed.state = "failed".into();
        let h = [accepted("k1", "t1"), accepted("k2", "t2")];
        let v = judge(&h, &[], &[failed], &[], &[], &expect);
        assert_eq!(v.lost.len(), 2, "{:?}", v.lost);
    }

    #[test]
    fn a_result_from_a_superseded_attempt_is_a_double_commit() {
        let finals = HashMap::new();
        let expect = Expect {
            final_states: &finals,
            http: true,
        };
        let mut t = task("t1", "k1", 2);
        t.result = Some(json!({"status": 200, "body": {"attempt": 1}}));
        let ds = [delivery("t1", 1, 0.0, 10.0), delivery("t1", 2, 20.0, 30.0)];
        let v = judge(&[accepted("k1", "t1")], &ds, &[t], &[], &[], &expect);
        assert_eq!(v.double_committed.len(), 1, "{:?}", v.double_committed);
    }

    #[test]
    fn p99_is_the_rank_value() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(max_p99(&v), Some((100.0, 99.0)));
        assert_eq!(max_p99(&[5.0]), Some((5.0, 5.0)));
        assert_eq!(max_p99(&[]), None);
    }
}
