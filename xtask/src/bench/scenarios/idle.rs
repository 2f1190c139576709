//! `idle`: 100,000 cron jobs due once a year (`0 0 1 1 *`, at midnight on 1 January) in one
//! `idem serve` on SQLite; once they are created and the process has settled, its CPU use over 30 s
//! (percent of one core) and its resident memory (and peak) at the end.

use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};

use super::round;
use crate::bench::db::Db;
use crate::bench::procs::{rss_mib, CpuSample};
use crate::bench::stack::{Shape, Stack};
use crate::bench::{api, Ctx};

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let n = ctx.sizes.idle_jobs;
    ctx.note(&format!(
        "idle embedded: {n} yearly cron jobs, {} s",
        ctx.sizes.idle_seconds
    ));
    match idem(ctx, n).await {
        Ok(v) => ctx.emit(v),
        Err(e) => ctx.emit_failure("idle", "embedded", &e),
    }
    Ok(())
}

async fn idem(ctx: &Ctx, n: usize) -> anyhow::Result<Value> {
    let mut stack = Stack::start(ctx, Shape::Embedded, "idle", &[]).await?;
    let r = measure(ctx, &mut stack, n).await;
    stack.finish(ctx).await;
    r
}

async fn measure(ctx: &Ctx, stack: &mut Stack, n: usize) -> anyhow::Result<Value> {
    let created = api::create_jobs(&stack.base, n, Duration::from_secs(1200), |i| {
        json!({
            "id": format!("c{i}"),
            "task": "noop",
            "trigger": {"type": "cron", "expr": "0 0 1 1 *"},
        })
    })
    .await;
    if created.ok != n as u64 {
        bail!(
            "{} of {n} jobs created in {:.1} s: {:?}",
            created.ok,
            created.seconds,
            created.errors
        );
    }
    let db = Db::open(&stack.database_url).await?;
    let stored = db.jobs().await?;
    db.close().await;
    if stored != n as i64 {
        bail!("{stored} jobs in the store after {n} were created");
    }
    let settle = if ctx.quick { 1 } else { 5 };
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let pids = stack.pids();
    let (_, pid) = pids[0].clone();
    let before = rss_mib(pid);
    let c0 = CpuSample::take(&pids);
    tokio::time::sleep(Duration::from_secs(ctx.sizes.idle_seconds)).await;
    let c1 = CpuSample::take(&pids);
    let (rss, peak) = rss_mib(pid).unwrap_or((f64::NAN, f64::NAN));
    if let Some(d) = stack.dead() {
        bail!("{d}");
    }
    let (cpu, _) = c0.percent_until(&c1);
    Ok(json!({
        "scenario": "idle",
        "system": "idem",
        "shape": "embedded",
        "jobs": n,
        "seconds": ctx.sizes.idle_seconds,
        "cpu_pct": round(cpu, 2),
        "rss_mb": round(rss, 1),
        "rss_mb_at_start": before.map(|b| round(b.0, 1)),
        "peak_rss_mb": round(peak, 1),
        "create_per_s": round(created.per_s(), 0),
        "trigger": "cron 0 0 1 1 *",
    }))
}
