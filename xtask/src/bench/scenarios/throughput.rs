//! `throughput`: N `noop` tasks through the batch endpoint (1,000 per request, one request after
//! the other) until none is scheduled, queued, running or retrying; the clock runs from the first
//! request to the moment the store shows all of them finished. Shapes embedded, pg and full, each
//! on a fresh store; then the same N through Celery (and the Rust peers, see `peers`).

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use super::round;
use crate::bench::db::Db;
use crate::bench::stack::{Shape, Stack};
use crate::bench::{api, peers, Ctx};

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let n = ctx.sizes.throughput_n;
    for shape in [Shape::Embedded, Shape::Pg, Shape::Full] {
        ctx.note(&format!("throughput {}: {n} tasks", shape.as_str()));
        match idem(ctx, shape, n).await {
            Ok(v) => ctx.emit(v),
            Err(e) => ctx.emit_failure("throughput", shape.as_str(), &e),
        }
    }
    if ctx.peers {
        let v = peers::celery_throughput(ctx, n).await;
        ctx.emit(v);
        // The pg shape's goal is against the faster Rust peer: measure them here unless the peers
        // scenario already did.
        peers::rust_throughput(ctx).await;
    }
    Ok(())
}

async fn idem(ctx: &Ctx, shape: Shape, n: usize) -> anyhow::Result<Value> {
    let mut stack =
        Stack::start(ctx, shape, &format!("throughput-{}", shape.as_str()), &[]).await?;
    let r = measure(&mut stack, n).await;
    let states = match Db::open(&stack.database_url).await {
        Ok(db) => {
            let s = db.task_states().await.unwrap_or_default();
            db.close().await;
            s
        }
        Err(_) => Default::default(),
    };
    stack.finish(ctx).await;
    let (submit_s, total_s) = r?;
    let succeeded = states.get("succeeded").copied().unwrap_or(0);
    if succeeded != n as i64 {
        bail!("{succeeded} of {n} tasks succeeded (states {states:?})");
    }
    Ok(json!({
        "scenario": "throughput",
        "system": "idem",
        "shape": shape.as_str(),
        "n": n,
        "per_s": round(n as f64 / total_s, 0),
        "seconds": round(total_s, 3),
        "submit_per_s": round(n as f64 / submit_s, 0),
        "succeeded": succeeded,
        "workers": if shape == Shape::Embedded { 1 } else { 2 },
    }))
}

/// (submit seconds, end-to-end seconds).
async fn measure(stack: &mut Stack, n: usize) -> anyhow::Result<(f64, f64)> {
    let http = api::client();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let t0 = Instant::now();
    let mut start = 0;
    while start < n {
        let end = (start + 1000).min(n);
        let items: Vec<Value> = (start..end)
            .map(|i| json!({"task": "noop", "args": {"i": i, "run": run}}))
            .collect();
        api::submit_batch(&http, &stack.base, items).await?;
        start = end;
    }
    let submit_s = t0.elapsed().as_secs_f64();
    // Generous: a slow machine takes longer, it does not fail.
    let limit = Duration::from_secs(120 + n as u64 / 50);
    loop {
        if api::drained(&http, &stack.base).await? {
            break;
        }
        if t0.elapsed() > limit {
            bail!("tasks still unfinished after {limit:?}");
        }
        if let Some(dead) = stack.dead() {
            bail!("{dead}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((submit_s, t0.elapsed().as_secs_f64()))
}
