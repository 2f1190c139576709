//! `latency`: one task at a time, 1,000 times: `POST /api/v1/tasks/submit`, then
//! `GET /api/v1/tasks/{id}/result?wait_seconds=5` until the answer is final; the round trip from
//! sending the submission to reading the final result, over one keep-alive connection, after 10
//! round trips of warm-up. Shapes embedded and full; beside Celery's `.delay().get()` and
//! graphile_worker's add → handler start.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{percentile, round};
use crate::bench::stack::{Shape, Stack};
use crate::bench::{peers, Ctx};

const WARMUP: usize = 10;

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let n = ctx.sizes.latency_n;
    for shape in [Shape::Embedded, Shape::Full] {
        ctx.note(&format!("latency {}: {n} round trips", shape.as_str()));
        match idem(ctx, shape, n).await {
            Ok(v) => ctx.emit(v),
            Err(e) => ctx.emit_failure("latency", shape.as_str(), &e),
        }
    }
    if ctx.peers {
        let v = peers::celery_latency(ctx, n).await;
        ctx.emit(v);
        let v = peers::graphile_latency(ctx, n).await;
        ctx.emit(v);
    }
    Ok(())
}

async fn idem(ctx: &Ctx, shape: Shape, n: usize) -> anyhow::Result<Value> {
    let mut stack = Stack::start(ctx, shape, &format!("latency-{}", shape.as_str()), &[]).await?;
    let r = measure(&stack, n).await;
    let dead = stack.dead();
    stack.finish(ctx).await;
    if let Some(d) = dead {
        bail!("{d}");
    }
    let mut ms = r?;
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    Ok(json!({
        "scenario": "latency",
        "system": "idem",
        "shape": shape.as_str(),
        "n": n,
        "p50_ms": round(percentile(&ms, 50.0), 3),
        "p90_ms": round(percentile(&ms, 90.0), 3),
        "p99_ms": round(percentile(&ms, 99.0), 3),
        "max_ms": round(ms.last().copied().unwrap_or(f64::NAN), 3),
        "mean_ms": round(mean, 3),
        "measures": "submit sent -> final result read",
    }))
}

async fn measure(stack: &Stack, n: usize) -> anyhow::Result<Vec<f64>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()?;
    let submit = format!("{}/api/v1/tasks/submit", stack.base);
    let mut out = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let t = Instant::now();
        let r = http
            .post(&submit)
            .json(&json!({"task": "noop", "args": {"i": i}}))
            .send()
            .await
            .context("submit")?;
        if r.status().as_u16() != 202 {
            bail!("submit answered {}", r.status());
        }
        let task: Value = r.json().await?;
        let id = task["id"].as_str().context("a submitted task has an id")?;
        let url = format!("{}/api/v1/tasks/{id}/result?wait_seconds=5", stack.base);
        let mut polls = 0;
        loop {
            let r = http.get(&url).send().await.context("result")?;
            let status = r.status().as_u16();
            let _ = r.bytes().await?;
            if status == 200 {
                break;
            }
            polls += 1;
            if status != 202 || polls > 12 {
                bail!("task {id}: result answered {status} after {polls} waits");
            }
        }
        if i >= WARMUP {
            out.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(out)
}
