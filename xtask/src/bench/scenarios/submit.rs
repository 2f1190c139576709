//! `submit`: single-task submissions (`POST /api/v1/tasks/submit`) accepted per second by 32
//! concurrent clients, each with its own keep-alive connection, for 10 s or 50,000 requests
//! (whichever comes first), against a fresh `idem serve` — once with a unique idempotency key per
//! request and once without. The worker pool runs and drains meanwhile, as it would in production.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde_json::json;

use super::round;
use crate::bench::stack::{Shape, Stack};
use crate::bench::{api, Ctx};

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    for keys in [true, false] {
        let label = if keys { "keys" } else { "nokeys" };
        ctx.note(&format!(
            "submit embedded {}: {} connections, {} s or {} requests",
            if keys { "with keys" } else { "without keys" },
            ctx.sizes.submit_conns,
            ctx.sizes.submit_seconds,
            ctx.sizes.submit_max
        ));
        match one(ctx, keys, label).await {
            Ok(v) => ctx.emit(v),
            Err(e) => ctx.emit_failure("submit", &format!("embedded-{label}"), &e),
        }
    }
    Ok(())
}

async fn one(ctx: &Ctx, keys: bool, label: &str) -> anyhow::Result<serde_json::Value> {
    let mut stack = Stack::start(ctx, Shape::Embedded, &format!("submit-{label}"), &[]).await?;
    let url = Arc::new(format!("{}/api/v1/tasks/submit", stack.base));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let s = &ctx.sizes;
    let load = api::load(
        s.submit_conns,
        s.submit_max,
        Duration::from_secs_f64(s.submit_seconds),
        move |http, i| {
            let url = url.clone();
            let body = if keys {
                json!({"task": "noop", "args": {"i": i}, "idempotency_key": format!("{run}-{i}")})
            } else {
                json!({"task": "noop", "args": {"i": i}})
            };
            async move {
                let r = http.post(url.as_str()).json(&body).send().await?;
                let status = r.status().as_u16();
                // Read the body: the connection is reused only once the answer is consumed.
                let text = r.bytes().await?;
                if status == 202 {
                    Ok(true)
                } else {
                    bail!("answered {status}: {}", String::from_utf8_lossy(&text))
                }
            }
        },
    )
    .await;
    let dead = stack.dead();
    stack.finish(ctx).await;
    if let Some(d) = dead {
        bail!("{d}");
    }
    if load.ok == 0 {
        bail!("no submission was accepted: {:?}", load.errors);
    }
    Ok(json!({
        "scenario": "submit",
        "system": "idem",
        "shape": "embedded",
        "keys": keys,
        "connections": s.submit_conns,
        "per_s": round(load.per_s(), 0),
        "sent": load.sent,
        "accepted": load.ok,
        "failed": load.failed,
        "seconds": round(load.seconds, 3),
        "errors": load.errors,
    }))
}
