//! S2 worker crashes: keyed `http` tasks that each hold the receiver 50–500 ms, while workers are
//! killed with SIGKILL on a seeded schedule and restarted at once.
//!
//! Kill-to-reclaim: right after each kill the runner reads which tasks the dead process held (its
//! pid is in their `lease_owner`) and polls them every 50 ms until the store hands them on (the
//! lease reaper makes them queued or retrying again, or fails them). The time is the reaper's own
//! log timestamp of the reap (the poll's time where no log line names the task). A task the dead
//! worker finished just before dying is not counted.
//!
//! Pass: 0 lost, 0 double-committed, 0 overlapping, and the slowest reclaim within the lease TTL
//! plus the reaper interval (plus 200 ms for the reaper's pass itself and the timing).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::client::http_task;
use crate::cluster::Role;
use crate::rig::{Rig, LEASE_SECONDS, MAINTENANCE_SECONDS};
use crate::store;

/// How often a killed worker's tasks are polled.
const RECLAIM_POLL: Duration = Duration::from_millis(50);

/// What the bound allows beyond TTL + interval: the reaper's own pass (it sleeps one interval
/// *after* each pass, so passes are an interval plus a pass apart) and the timing itself.
const SLACK_MS: f64 = 200.0;

pub async fn run(rig: &mut Rig) -> anyhow::Result<()> {
    let smoke = rig.opts.smoke;
    let (tasks, kills, workers, concurrency) = if smoke {
        (1_200usize, 6usize, 4usize, 8u32)
    } else {
        (10_000, 50, 4, 16)
    };
    rig.start_cluster(2, 3, workers, concurrency).await?;
    let hook = rig.receiver.hook.clone();
    let client = rig.client().clone();

    let holds: Vec<u64> = (0..tasks).map(|_| rig.rng.range(50, 500)).collect();
    let mean = holds.iter().sum::<u64>() as f64 / tasks as f64;
    // The time the pool needs without faults, stretched a little: kills are spread over it.
    let window =
        (tasks as f64 * mean / f64::from(concurrency * workers as u32) * 1.2 / 1e3).max(5.0);
    let mut schedule: Vec<(f64, usize)> = (0..kills)
        .map(|_| {
            (
                1.0 + rig.rng.unit() * (window - 1.0),
                rig.rng.below(workers),
            )
        })
        .collect();
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    rig.report.workload = format!(
        "{tasks} http tasks of 50–500 ms (mean {mean:.0} ms), {workers} workers × {concurrency}"
    );
    rig.report.faults = vec![format!(
        "{kills} × kill -9 worker (restarted at once) over {window:.0} s"
    )];

    // Submissions, through both apis, 32 at once.
    let submitter = {
        let gate = Arc::new(Semaphore::new(32));
        let (client, hook) = (client.clone(), hook.clone());
        tokio::spawn(async move {
            let mut handles = Vec::new();
            for (i, hold) in holds.into_iter().enumerate() {
                let (client, hook, gate) = (client.clone(), hook.clone(), gate.clone());
                handles.push(tokio::spawn(async move {
                    let _p = gate.acquire().await;
                    let key = format!("s2-k{i}");
                    let request = http_task(&hook, &key, hold, json!({}));
                    client
                        .submit_until_settled(i, &key, &request, Duration::from_secs(60))
                        .await
                }));
            }
            for h in handles {
                let _ = h.await;
            }
        })
    };

    // The kills.
    let started = Instant::now();
    let mut trackers = Vec::new();
    for (at, w) in &schedule {
        let due = started + Duration::from_secs_f64(*at);
        tokio::time::sleep_until(due.into()).await;
        let killed_at = (Instant::now(), Utc::now());
        let pid = rig.cluster.kill9(Role::Worker, *w).await?;
        let held = store::running_on(&rig.pool, pid).await.unwrap_or_default();
        let pool = rig.pool.clone();
        trackers.push(tokio::spawn(track_reclaim(pool, held, killed_at)));
        rig.cluster.restart(Role::Worker, *w).await?;
    }
    submitter.await?;
    let open = rig
        .wait_all_final(tasks, Duration::from_secs(if smoke { 60 } else { 180 }))
        .await?;

    // Each reclaim's time: the reaper's log timestamp of the reap when there is one (exact), else
    // when the poll saw it.
    let reaped = rig.cluster.events.reaped.lock().unwrap().clone();
    let mut reclaims = Vec::new();
    let mut held_total = 0;
    let mut unreclaimed = 0;
    let mut from_logs = 0;
    for t in trackers {
        let (outcomes, (_, killed_wall)) = t.await?;
        for (id, o) in outcomes {
            match o {
                Reclaim::Polled(ms) => {
                    held_total += 1;
                    let logged = reaped
                        .iter()
                        .filter(|(r, at)| *r == id && *at >= killed_wall)
                        .map(|(_, at)| {
                            (*at - killed_wall).num_microseconds().unwrap_or(0) as f64 / 1e3
                        })
                        .reduce(f64::min);
                    if logged.is_some() {
                        from_logs += 1;
                    }
                    reclaims.push(logged.unwrap_or(ms));
                }
                Reclaim::FinishedByOwner => {}
                Reclaim::Never => {
                    held_total += 1;
                    unreclaimed += 1;
                }
            }
        }
    }
    let (verdict, _, _) = rig.judge(&HashMap::new(), true).await?;
    let bound_ms = (LEASE_SECONDS + MAINTENANCE_SECONDS) * 1e3;
    let slack = SLACK_MS;
    let r = &mut rig.report;
    r.recovery(&reclaims);
    r.check("every task final", open == 0, format!("{open} unfinished"));
    r.verdict(&verdict, true);
    let max = r.recovery_max_ms.unwrap_or(0.0);
    r.check(
        "kill-to-reclaim max ≤ lease TTL + reaper interval",
        unreclaimed == 0 && max <= bound_ms + slack,
        format!(
            "{} tasks held by killed workers, {} reclaimed ({from_logs} timed by the reaper's log); \
             max {max:.0} ms, p99 {:.0} ms (bound {bound_ms:.0} ms + {slack:.0} ms for the reaper's \
             own pass and the timing)",
            held_total,
            reclaims.len(),
            r.recovery_p99_ms.unwrap_or(0.0)
        ),
    );
    let mut sorted = reclaims.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted.get(sorted.len() / 2).copied();
    r.extra = json!({
        "held_by_killed_workers": held_total,
        "reclaimed": reclaims.len(),
        "reclaim_p50_ms": p50.map(f64::round),
        "retried_tasks": verdict.retried_tasks,
    });
    std::fs::write(
        rig.dir.join("reclaim_ms.json"),
        serde_json::to_string(&reclaims)?,
    )?;
    Ok(())
}

/// How one task a killed worker held was handed on.
enum Reclaim {
    /// The store handed it on; when the poll saw that, in ms after the kill.
    Polled(f64),
    /// Its worker committed it just before it died.
    FinishedByOwner,
    /// Not within a minute.
    Never,
}

/// Polls the tasks a killed worker held until each is handed on (see [`Reclaim`]).
async fn track_reclaim(
    pool: sqlx::PgPool,
    held: Vec<(String, i32)>,
    killed_at: (Instant, DateTime<Utc>),
) -> (Vec<(String, Reclaim)>, (Instant, DateTime<Utc>)) {
    let mut pending: HashMap<String, i32> = held.into_iter().collect();
    let mut out = Vec::new();
    let deadline = killed_at.0 + Duration::from_secs(60);
    while !pending.is_empty() && Instant::now() < deadline {
        let ids: Vec<String> = pending.keys().cloned().collect();
        if let Ok(states) = store::states_of(&pool, &ids).await {
            let at = killed_at.0.elapsed().as_secs_f64() * 1e3;
            for (id, (state, attempts)) in states {
                let Some(&a) = pending.get(&id) else { continue };
                if state == "running" && attempts == a {
                    continue;
                }
                let how = if state == "succeeded" && attempts == a {
                    Reclaim::FinishedByOwner
                } else {
                    Reclaim::Polled(at)
                };
                pending.remove(&id);
                out.push((id, how));
            }
        }
        tokio::time::sleep(RECLAIM_POLL).await;
    }
    out.extend(pending.into_keys().map(|id| (id, Reclaim::Never)));
    (out, killed_at)
}
