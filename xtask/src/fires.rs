//! Scheduled jobs for the scenarios that check fires (S3, S6, S7): interval jobs with a fixed
//! `start_at`, so the slots each job must fire are known in advance, and the check of the fire
//! history against them.
//!
//! A job with `every_seconds = N` and `start_at = S` must fire every slot `S + k·N` from its start
//! until it is paused; each fire must be recorded once (one `job_runs` row, one task under the fire
//! key — the oracle checks the second), none may be recorded for a slot after the pause, none
//! before its time, and its task must succeed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{bail, Context};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::json;

use crate::client::Client;
use crate::store::{RunRow, TaskRow};

/// One job as created.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub every_ms: i64,
    pub start_at: DateTime<Utc>,
    /// When its pause was asked for and when it was answered (filled by [`pause_all`]).
    pub paused: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Creates interval jobs that call the receiver: `every_s[i]` seconds each, all starting at
/// `start_at` (which must be in the future, so no slot is skipped by the creation itself).
pub async fn create(
    client: &Client,
    hook: &str,
    prefix: &str,
    every_s: &[u64],
    start_at: DateTime<Utc>,
) -> anyhow::Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for (i, every) in every_s.iter().enumerate() {
        let id = format!("{prefix}-j{i}");
        let spec = json!({
            "id": id,
            "task": "http",
            "args": {"url": hook, "body": {"key": id, "hold_ms": 0}, "timeout_seconds": 30},
            "trigger": {
                "type": "interval",
                "every_seconds": every,
                "start_at": start_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            },
            // Each overdue slot fires on its own (no coalescing), and a late one is still fired
            // rather than recorded as missed: the checks want every slot.
            "coalesce": false,
            "misfire_grace_seconds": 300,
            "max_instances": 10,
            "max_retries": 10,
        });
        let url = format!("{}/api/v1/jobs", client.bases[i % client.bases.len()]);
        let r = client
            .http()
            .post(&url)
            .json(&spec)
            .send()
            .await
            .with_context(|| format!("creating job {id}"))?;
        if r.status().as_u16() != 201 {
            bail!(
                "creating job {id}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        jobs.push(Job {
            id,
            every_ms: *every as i64 * 1000,
            start_at,
            paused: None,
        });
    }
    Ok(jobs)
}

/// Pauses every job (retrying each for up to a minute), recording when.
pub async fn pause_all(client: &Client, jobs: &mut [Job]) -> anyhow::Result<()> {
    for (i, j) in jobs.iter_mut().enumerate() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let asked = Utc::now();
        loop {
            let url = format!(
                "{}/api/v1/jobs/{}/pause",
                client.bases[i % client.bases.len()],
                j.id
            );
            let r = client.http().post(&url).json(&json!({})).send().await;
            if matches!(&r, Ok(resp) if resp.status().as_u16() == 200) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("pausing {}: {r:?}", j.id);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        j.paused = Some((asked, Utc::now()));
    }
    Ok(())
}

/// What the fire check found.
#[derive(Debug, Default)]
pub struct FireCheck {
    pub expected: usize,
    pub fired: usize,
    pub missing: Vec<String>,
    pub after_pause: Vec<String>,
    pub early: Vec<String>,
    pub not_succeeded: Vec<String>,
    pub missed_or_skipped: usize,
    /// recorded_at − scheduled_at of each fire, in ms (the store's clock on both sides).
    pub lateness_ms: Vec<f64>,
}

/// Slots whose time is this close to the pause may or may not have fired.
const PAUSE_MARGIN_MS: i64 = 2000;
/// A fire recorded this much before its slot (store clock) is early.
const EARLY_TOLERANCE_MS: i64 = 5;

pub fn check(jobs: &[Job], runs: &[RunRow], tasks: &[TaskRow]) -> FireCheck {
    let mut c = FireCheck::default();
    let task_state: HashMap<&str, &str> = tasks
        .iter()
        .map(|t| (t.id.as_str(), t.state.as_str()))
        .collect();
    let mut by_job: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for r in runs {
        let at = r.scheduled_at.timestamp_millis();
        by_job.entry(r.job_id.as_str()).or_default().insert(at);
        if r.outcome != "fired" {
            c.missed_or_skipped += 1;
            continue;
        }
        c.fired += 1;
        let late = (r.recorded_at - r.scheduled_at).num_milliseconds();
        c.lateness_ms.push(late as f64);
        if late < -EARLY_TOLERANCE_MS {
            c.early.push(format!(
                "{} slot {} fired {late} ms early",
                r.job_id, r.scheduled_at
            ));
        }
        match r.task_id.as_deref().and_then(|t| task_state.get(t)) {
            Some(&"succeeded") => {}
            other => c.not_succeeded.push(format!(
                "{} slot {}: task {:?} is {other:?}",
                r.job_id, r.scheduled_at, r.task_id
            )),
        }
    }
    for j in jobs {
        let Some((asked, answered)) = j.paused else {
            continue;
        };
        let slots = by_job.get(j.id.as_str());
        let mut at = j.start_at;
        while at <= asked - ChronoDuration::milliseconds(PAUSE_MARGIN_MS) {
            c.expected += 1;
            if !slots.is_some_and(|s| s.contains(&at.timestamp_millis())) {
                c.missing.push(format!("{} slot {at}", j.id));
            }
            at += ChronoDuration::milliseconds(j.every_ms);
        }
        if let Some(s) = slots {
            for &ms in s {
                if ms > answered.timestamp_millis() + 500 {
                    c.after_pause
                        .push(format!("{} slot {ms} after its pause", j.id));
                }
            }
        }
    }
    c
}
