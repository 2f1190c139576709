//! `failover`: 1 api + 2 schedulers + 1 worker, 20 one-second interval jobs; after 5.3 s one
//! scheduler is killed with SIGKILL, and 5 s later the fire history shows how soon fires resumed:
//! the first fire recorded after the kill, the time by which every job had fired again, the largest
//! gap between two consecutive fired slots of a job, and the slots between the first and the end of
//! the run that were not fired. Shapes pg and full. (The fault suite, docs/RELIABILITY.md, checks
//! scheduler crashes for correctness; this measures the pause a crash costs.)

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Value};

use super::round;
use crate::bench::db::Db;
use crate::bench::stack::{Shape, Stack};
use crate::bench::{api, Ctx};

const JOBS: usize = 20;

/// (slot, recorded at) of one fire.
type Fire = (DateTime<Utc>, DateTime<Utc>);

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    // Quick: the pg shape only.
    let shapes: &[Shape] = if ctx.quick {
        &[Shape::Pg]
    } else {
        &[Shape::Pg, Shape::Full]
    };
    for &shape in shapes {
        ctx.note(&format!(
            "failover {}: {JOBS} one-second jobs, 2 schedulers, SIGKILL one",
            shape.as_str()
        ));
        match idem(ctx, shape).await {
            Ok(v) => ctx.emit(v),
            Err(e) => ctx.emit_failure("failover", shape.as_str(), &e),
        }
    }
    Ok(())
}

async fn idem(ctx: &Ctx, shape: Shape) -> anyhow::Result<Value> {
    let label = format!("failover-{}", shape.as_str());
    let mut stack = Stack::start_with(ctx, shape, &label, &[], 2, 1).await?;
    let r = measure(&mut stack).await;
    stack.finish(ctx).await;
    let mut v = r?;
    v["shape"] = json!(shape.as_str());
    Ok(v)
}

async fn measure(stack: &mut Stack) -> anyhow::Result<Value> {
    let base = DateTime::from_timestamp(Utc::now().timestamp() + 2, 0).context("clock")?;
    let created = api::create_jobs(&stack.base, JOBS, Duration::from_secs(60), move |i| {
        let start = base + TimeDelta::milliseconds(i as i64 * 50);
        json!({
            "id": format!("f{i}"),
            "task": "noop",
            "trigger": {
                "type": "interval",
                "every_seconds": 1,
                "start_at": start.to_rfc3339_opts(SecondsFormat::Millis, true),
            },
            "max_instances": 5,
        })
    })
    .await;
    if created.ok != JOBS as u64 {
        bail!(
            "{} of {JOBS} jobs created: {:?}",
            created.ok,
            created.errors
        );
    }
    let kill_at = base + TimeDelta::milliseconds(5_300);
    if let Ok(d) = (kill_at - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
    stack.kill9("scheduler-0").await?;
    let killed = Utc::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The last slot counted: one second before the end, so that it had time to be recorded.
    let end = Utc::now() - TimeDelta::seconds(1);
    if let Some(d) = stack.dead() {
        bail!("{d}");
    }
    stack.stop_procs().await;
    let db = Db::open(&stack.database_url).await?;
    let rows = db.fire_rows().await?;
    db.close().await;

    let mut by_job: BTreeMap<String, Vec<Fire>> = BTreeMap::new();
    for (job, slot, recorded, outcome) in rows {
        if outcome == "fired" && slot < end {
            by_job.entry(job).or_default().push((slot, recorded));
        }
    }
    let ms = |d: TimeDelta| d.num_milliseconds() as f64;
    let mut first_after = Vec::new();
    let mut largest_gap = 0.0f64;
    let mut not_fired = 0i64;
    for i in 0..JOBS {
        let start = base + TimeDelta::milliseconds(i as i64 * 50);
        let expected = ((end - start).num_milliseconds() as f64 / 1000.0)
            .ceil()
            .max(0.0) as i64;
        let fires = by_job.get(&format!("f{i}")).cloned().unwrap_or_default();
        not_fired += expected - fires.len() as i64;
        if let Some((_, r)) = fires.iter().find(|(_, r)| *r > killed) {
            first_after.push(ms(*r - killed));
        }
        for w in fires.windows(2) {
            largest_gap = largest_gap.max(ms(w[1].0 - w[0].0) / 1000.0);
        }
    }
    // A measurement, not a check: jobs that did not fire again within the 5 s are counted.
    let silent = JOBS - first_after.len();
    Ok(json!({
        "scenario": "failover",
        "system": "idem",
        "jobs": JOBS,
        "schedulers": 2,
        "first_fire_after_kill_ms": first_after.iter().copied().reduce(f64::min).map(|x| round(x, 0)),
        "every_job_fired_again_within_ms": (silent == 0)
            .then(|| first_after.iter().copied().fold(0.0, f64::max))
            .map(|x| round(x, 0)),
        "jobs_silent_after_kill": silent,
        "largest_gap_between_slots_s": round(largest_gap, 3),
        "not_fired": not_fired,
    }))
}
