//! `schedule`: N durable one-second interval jobs (`noop`, `max_instances` 5), their first fires
//! spread over the second (job i at offset `i * 997 mod 1000` ms), measured for D seconds on
//! SQLite (`idem serve`) and PostgreSQL (1 api + 1 scheduler + 2 workers); beside APScheduler 3
//! with its PostgreSQL job store at the same N.
//!
//! The measured window is `[w0, w0 + D)`, where w0 is a whole number of seconds after the first
//! slot and at least one second after the last job was created; so every job has exactly D slots
//! in it and `expected = N × D`. Five seconds after the window closes the processes are stopped and
//! the fire history (`job_runs`) of the window's slots is read from the store:
//!
//! * `fires`: slots recorded `fired`; lateness = `recorded_at - scheduled_at` of each of them;
//! * `missed`: slots with no record at all, or recorded `missed` (the scheduler did not fire them
//!   within their grace);
//! * `skipped`: slots recorded `skipped_overlap` (the job already had 5 unfinished tasks: the
//!   workers were behind) or `key_conflict`.
//!
//! CPU is the idem processes' user + system time over the window as a percentage of one core;
//! memory is their resident set at the window's end (and its peak).

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Map, Value};

use super::{percentile, round};
use crate::bench::db::Db;
use crate::bench::procs::{rss_mib, CpuSample};
use crate::bench::stack::{Shape, Stack};
use crate::bench::{api, peers, Ctx};

/// How long after the window the fire history is read: a slot not recorded by then is missed
/// (2 s in a quick run).
const GRACE: Duration = Duration::from_secs(5);

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let secs = ctx.sizes.schedule_seconds;
    for n in ctx.sizes.schedule_n.clone() {
        for shape in [Shape::Embedded, Shape::Pg] {
            ctx.note(&format!(
                "schedule {}: {n} one-second jobs for {secs} s",
                shape.as_str()
            ));
            match idem(ctx, shape, n, secs).await {
                Ok(v) => ctx.emit(v),
                Err(e) => ctx.emit_failure("schedule", shape.as_str(), &e),
            }
        }
        if ctx.peers {
            ctx.note(&format!("schedule apscheduler: {n} jobs for {secs} s"));
            let v = peers::apscheduler(ctx, n, secs).await;
            ctx.emit(v);
        }
    }
    Ok(())
}

async fn idem(ctx: &Ctx, shape: Shape, n: usize, secs: u64) -> anyhow::Result<Value> {
    let label = format!("schedule-{}-{n}", shape.as_str());
    let mut stack = Stack::start(ctx, shape, &label, &[]).await?;
    let grace = if ctx.quick {
        Duration::from_secs(2)
    } else {
        GRACE
    };
    let r = measure(&mut stack, n, secs, grace).await;
    stack.finish(ctx).await;
    let mut v = r?;
    v["shape"] = json!(shape.as_str());
    Ok(v)
}

fn ceil_second(t: DateTime<Utc>) -> DateTime<Utc> {
    let ms = t.timestamp_millis();
    let up = (ms + 999).div_euclid(1000) * 1000;
    DateTime::from_timestamp_millis(up).unwrap_or(t)
}

async fn sleep_until(t: DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}

async fn measure(stack: &mut Stack, n: usize, secs: u64, grace: Duration) -> anyhow::Result<Value> {
    // The first slot: far enough ahead for the creation to finish at 2,000 jobs/s; a slower creation
    // only moves the window later.
    let base = ceil_second(Utc::now() + TimeDelta::milliseconds(2000 + n as i64 / 2));
    let body = move |i: usize| {
        let start = base + TimeDelta::milliseconds(((i * 997) % 1000) as i64);
        json!({
            "id": format!("j{i}"),
            "task": "noop",
            "trigger": {
                "type": "interval",
                "every_seconds": 1,
                "start_at": start.to_rfc3339_opts(SecondsFormat::Millis, true),
            },
            "max_instances": 5,
        })
    };
    let created = api::create_jobs(&stack.base, n, Duration::from_secs(900), body).await;
    if created.ok != n as u64 {
        bail!(
            "{} of {n} jobs created in {:.1} s: {:?}",
            created.ok,
            created.seconds,
            created.errors
        );
    }
    let done = Utc::now();
    let m = ((done + TimeDelta::seconds(1) - base).num_milliseconds() as f64 / 1000.0)
        .ceil()
        .max(1.0) as i64;
    let w0 = base + TimeDelta::seconds(m);
    let w1 = w0 + TimeDelta::seconds(secs as i64);
    sleep_until(w0).await;
    let pids = stack.pids();
    let cpu0 = CpuSample::take(&pids);
    sleep_until(w1).await;
    let cpu1 = CpuSample::take(&pids);
    let mem: Vec<(String, f64, f64)> = pids
        .iter()
        .filter_map(|(l, pid)| rss_mib(*pid).map(|(r, h)| (l.clone(), r, h)))
        .collect();
    tokio::time::sleep(grace).await;
    if let Some(d) = stack.dead() {
        bail!("{d}");
    }
    stack.stop_procs().await;
    let db = Db::open(&stack.database_url).await?;
    let fires = db.fires(w0, w1).await.context("reading job_runs")?;
    db.close().await;

    let expected = n as i64 * secs as i64;
    let get = |k: &str| fires.outcomes.get(k).copied().unwrap_or(0);
    let recorded: i64 = fires.outcomes.values().sum();
    let absent = (expected - recorded).max(0);
    let missed = absent + get("missed");
    let skipped = get("skipped_overlap") + get("key_conflict");
    let mut late = fires.lateness_ms;
    late.sort_by(f64::total_cmp);
    let (cpu, per) = cpu0.percent_until(&cpu1);
    let per: Map<String, Value> = per
        .into_iter()
        .map(|(l, p)| (l, json!(round(p, 1))))
        .collect();
    Ok(json!({
        "scenario": "schedule",
        "system": "idem",
        "jobs": n,
        "seconds": secs,
        "expected": expected,
        "fires": get("fired"),
        "missed": missed,
        "skipped": skipped,
        "not_recorded": absent,
        "outcomes": fires.outcomes,
        "p50_ms": round(percentile(&late, 50.0), 1),
        "p99_ms": round(percentile(&late, 99.0), 1),
        "max_ms": round(late.last().copied().unwrap_or(f64::NAN), 1),
        "cpu_pct": round(cpu, 1),
        "cpu_pct_by_process": per,
        "rss_mb": round(mem.iter().map(|m| m.1).sum::<f64>(), 1),
        "peak_rss_mb": round(mem.iter().map(|m| m.2).sum::<f64>(), 1),
        "create_per_s": round(created.per_s(), 0),
        "window_start": w0.to_rfc3339_opts(SecondsFormat::Millis, true),
    }))
}
