//! S7 clock skew: three schedulers, one 30 s ahead and one 30 s behind (which is which is seeded),
//! through libfaketime (`LD_PRELOAD`; the Debian package `faketime`, installed here if missing).
//! Halfway through, the unskewed scheduler and one skewed one are frozen in turn, so that for a
//! while only a skewed clock is firing.
//!
//! idem decides due times and leases on the store's clock (`now()` in PostgreSQL), so a skewed host
//! clock must change nothing. Pass: every slot fired once, none missing, none early, none after the
//! pause; 0 lost / 0 double-committed; the skew really was in effect (the skewed schedulers' log
//! timestamps are ±30 s off).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, DurationRound, Utc};
use serde_json::json;

use crate::cluster::Role;
use crate::cmd;
use crate::fires;
use crate::rig::Rig;
use crate::scenarios::s3_scheduler_crashes::first;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// Installs the `faketime` package if its library is missing (we are root; CI does the same).
async fn ensure_faketime() -> anyhow::Result<()> {
    if Path::new(LIBFAKETIME).is_file() {
        return Ok(());
    }
    println!("  [S7] installing faketime (apt-get)");
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    let install = ["install", "-y", "-q", "faketime"];
    if cmd::run_env("apt-get", &install, &env, Duration::from_secs(300))
        .await
        .is_err()
    {
        cmd::run_env("apt-get", &["update", "-q"], &env, Duration::from_secs(300)).await?;
        cmd::run_env("apt-get", &install, &env, Duration::from_secs(300)).await?;
    }
    if !Path::new(LIBFAKETIME).is_file() {
        bail!("{LIBFAKETIME} is still missing after installing faketime");
    }
    Ok(())
}

/// The offset of a process's clock, from the timestamp of its first log line and when it started.
fn log_offset_s(log: &Path, started: DateTime<Utc>) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let stamp = text.lines().next()?.split_whitespace().next()?;
    let at = DateTime::parse_from_rfc3339(stamp)
        .ok()?
        .with_timezone(&Utc);
    Some((at - started).num_milliseconds() as f64 / 1e3)
}

pub async fn run(rig: &mut Rig) -> anyhow::Result<()> {
    ensure_faketime().await?;
    let smoke = rig.opts.smoke;
    let (n_jobs, window_s) = if smoke { (30, 20.0) } else { (100, 60.0) };
    let ahead = rig.rng.below(2); // which of schedulers 0 and 1 runs ahead
    let mut specs = vec![
        rig.spec(Role::Api, 0, &[], &[]),
        rig.spec(Role::Api, 1, &[], &[]),
    ];
    let mut started_at = Vec::new();
    for i in 0..3 {
        let offset = match i {
            2 => None,
            i if i == ahead => Some("+30s"),
            _ => Some("-30s"),
        };
        let spec = match offset {
            Some(o) => rig.spec(
                Role::Scheduler,
                i,
                &[],
                &[
                    ("LD_PRELOAD", LIBFAKETIME),
                    ("FAKETIME", o),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ],
            ),
            None => rig.spec(Role::Scheduler, i, &[], &[]),
        };
        specs.push(spec);
    }
    for i in 0..4 {
        specs.push(rig.spec(Role::Worker, i, &["--worker-concurrency", "16"], &[]));
    }
    for s in specs {
        let is_sched = s.role == Role::Scheduler;
        let t = Utc::now();
        let idx = rig.cluster.start(s).await?;
        if is_sched {
            started_at.push((idx, t));
        }
    }
    rig.start_client();
    let client = rig.client().clone();
    let hook = rig.receiver.hook.clone();

    let every: Vec<u64> = (0..n_jobs).map(|_| rig.rng.range(1, 3)).collect();
    let start_at =
        Utc::now().duration_trunc(chrono::Duration::seconds(1))? + chrono::Duration::seconds(3);
    let mut jobs = fires::create(&client, &hook, "s7", &every, start_at).await?;

    // Freeze the unskewed scheduler plus one skewed one at a time, so each skewed clock fires alone.
    let t = Instant::now();
    let third = window_s / 3.0;
    tokio::time::sleep(Duration::from_secs_f64(third)).await;
    let alone = |s: usize| [2, 1 - s];
    for solo in [0usize, 1] {
        let frozen = alone(solo);
        for f in frozen {
            rig.cluster.signal(Role::Scheduler, f, "STOP").await?;
        }
        tokio::time::sleep(Duration::from_secs_f64(third / 2.0)).await;
        for f in frozen {
            rig.cluster.signal(Role::Scheduler, f, "CONT").await?;
        }
    }
    tokio::time::sleep_until((t + Duration::from_secs_f64(window_s)).into()).await;
    fires::pause_all(&client, &mut jobs).await?;
    let open = rig.wait_all_final(0, Duration::from_secs(60)).await?;
    let (verdict, tasks, runs) = rig.judge(&HashMap::new(), true).await?;
    let c = fires::check(&jobs, &runs, &tasks);

    let offsets: Vec<Option<f64>> = started_at
        .iter()
        .map(|(idx, t)| log_offset_s(&rig.cluster.procs[*idx].log, *t))
        .collect();
    let skew_ok = offsets.iter().enumerate().all(|(i, o)| {
        let want = match i {
            2 => 0.0,
            i if i == ahead => 30.0,
            _ => -30.0,
        };
        o.is_some_and(|o| (o - want).abs() < 5.0)
    });
    rig.report.workload = format!("{n_jobs} interval jobs every 1–3 s for {window_s:.0} s");
    rig.report.faults = vec![
        format!(
            "scheduler-{ahead} +30 s, scheduler-{} −30 s (faketime)",
            1 - ahead
        ),
        "each skewed scheduler firing alone for a while".into(),
    ];
    let r = &mut rig.report;
    r.recovery(&c.lateness_ms);
    r.check(
        "the skew was in effect",
        skew_ok,
        format!("clock offsets of schedulers 0, 1, 2 from their logs: {offsets:?} s"),
    );
    r.check("every task final", open == 0, format!("{open} unfinished"));
    r.check(
        "no missing fire",
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
        "no duplicate, early or late-after-pause fire",
        c.early.is_empty() && c.after_pause.is_empty() && verdict.double_committed.is_empty(),
        format!(
            "{} early {:?}, {} after the pause",
            c.early.len(),
            first(&c.early),
            c.after_pause.len()
        ),
    );
    r.verdict(&verdict, true);
    r.extra = json!({"clock_offsets_s": offsets, "lateness_max_ms": r.recovery_max_ms});
    Ok(())
}
