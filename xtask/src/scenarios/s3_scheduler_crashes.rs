//! S3 scheduler crashes: interval jobs (every 1–5 s, seeded) calling the receiver, while the
//! schedulers are killed with SIGKILL (restarted after a pause) or frozen with SIGSTOP and thawed
//! with SIGCONT, one at a time, on a seeded schedule. The maintenance leader is a scheduler, so
//! its leader lease changes hands too.
//!
//! Pass: every slot due before the pause recorded and fired once, none after the pause, none early,
//! every fire's task succeeded, 0 lost / 0 double-committed / 0 overlapping. Fire lateness (the
//! store's `recorded_at − scheduled_at`) is reported in the recovery columns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
use serde_json::json;

use crate::cluster::Role;
use crate::fires;
use crate::rig::Rig;

pub async fn run(rig: &mut Rig) -> anyhow::Result<()> {
    let smoke = rig.opts.smoke;
    let (n_jobs, window_s, n_faults) = if smoke {
        (40, 20.0, 4u32)
    } else {
        (200, 60.0, 12)
    };
    rig.start_cluster(2, 3, 4, 16).await?;
    let client = rig.client().clone();
    let hook = rig.receiver.hook.clone();
    let every: Vec<u64> = (0..n_jobs).map(|_| rig.rng.range(1, 5)).collect();
    let start_at =
        Utc::now().duration_trunc(chrono::Duration::seconds(1))? + chrono::Duration::seconds(3);
    let mut jobs = fires::create(&client, &hook, "s3", &every, start_at).await?;

    // One fault at a time: each takes its slice of the window.
    let slice = window_s / f64::from(n_faults);
    let mut plan = Vec::new();
    // Kills and freezes alternate (the seed picks which comes first), so every run has both.
    let phase = rig.rng.below(2);
    for k in 0..n_faults {
        let sched = rig.rng.below(3);
        let kill = (k as usize + phase).is_multiple_of(2);
        let offset = rig.rng.unit() * slice * 0.3;
        let hold = 1.0 + rig.rng.unit() * (slice * 0.6 - 1.0).max(0.5);
        plan.push((f64::from(k) * slice + offset + 2.0, sched, kill, hold));
    }
    let kills = plan.iter().filter(|p| p.2).count();
    rig.report.workload =
        format!("{n_jobs} interval jobs every 1–5 s for {window_s:.0} s, http to the receiver");
    rig.report.faults = vec![
        format!(
            "{kills} × kill -9 scheduler (restarted after 1–{:.0} s)",
            slice * 0.6
        ),
        format!(
            "{} × SIGSTOP/SIGCONT scheduler (1–{:.0} s)",
            plan.len() - kills,
            slice * 0.6
        ),
    ];

    let t = Instant::now();
    for (at, sched, kill, hold) in plan {
        tokio::time::sleep_until((t + Duration::from_secs_f64(at)).into()).await;
        if kill {
            rig.cluster.kill9(Role::Scheduler, sched).await?;
            tokio::time::sleep(Duration::from_secs_f64(hold)).await;
            rig.cluster.restart(Role::Scheduler, sched).await?;
        } else {
            rig.cluster.signal(Role::Scheduler, sched, "STOP").await?;
            tokio::time::sleep(Duration::from_secs_f64(hold)).await;
            rig.cluster.signal(Role::Scheduler, sched, "CONT").await?;
        }
    }
    tokio::time::sleep_until((t + Duration::from_secs_f64(window_s + 2.0)).into()).await;
    fires::pause_all(&client, &mut jobs).await?;
    let open = rig.wait_all_final(0, Duration::from_secs(60)).await?;

    let (verdict, tasks, runs) = rig.judge(&HashMap::new(), true).await?;
    let c = fires::check(&jobs, &runs, &tasks);
    let r = &mut rig.report;
    r.recovery(&c.lateness_ms);
    r.check("every task final", open == 0, format!("{open} unfinished"));
    r.check(
        "every expected slot fired once",
        c.missing.is_empty(),
        format!(
            "{} expected, {} fired, {} missing {:?}",
            c.expected,
            c.fired,
            c.missing.len(),
            first(&c.missing)
        ),
    );
    r.check(
        "no fire after the pause, none early",
        c.after_pause.is_empty() && c.early.is_empty(),
        format!(
            "{} after, {} early {:?}",
            c.after_pause.len(),
            c.early.len(),
            first(&c.early)
        ),
    );
    r.check(
        "every fire's task succeeded",
        c.not_succeeded.is_empty() && c.missed_or_skipped == 0,
        format!(
            "{} not succeeded, {} missed/skipped runs",
            c.not_succeeded.len(),
            c.missed_or_skipped
        ),
    );
    r.verdict(&verdict, true);
    let (max, p99) = (
        r.recovery_max_ms.unwrap_or(0.0),
        r.recovery_p99_ms.unwrap_or(0.0),
    );
    r.check(
        "max lateness reported",
        true,
        format!("max {max:.0} ms, p99 {p99:.0} ms over {} fires", c.fired),
    );
    r.extra = json!({"expected_slots": c.expected, "fired": c.fired, "lateness_max_ms": max, "lateness_p99_ms": p99});
    Ok(())
}

pub fn first(v: &[String]) -> Vec<&String> {
    v.iter().take(3).collect()
}
