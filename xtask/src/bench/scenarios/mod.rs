//! The scenarios of `cargo xtask bench`, one module each (docs/BENCHMARKS.md describes them).

mod failover;
mod idle;
mod latency;
mod schedule;
mod submit;
mod throughput;

use super::Ctx;

/// Runs one scenario; its results are emitted as it goes. An error here is one idem measurement
/// that could not be taken at all (per-shape failures are emitted by the scenario and it goes on).
pub async fn run(ctx: &mut Ctx, id: &str) -> anyhow::Result<()> {
    match id {
        "throughput" => throughput::run(ctx).await,
        "peers" => {
            super::peers::rust_throughput(ctx).await;
            Ok(())
        }
        "submit" => submit::run(ctx).await,
        "latency" => latency::run(ctx).await,
        "schedule" => schedule::run(ctx).await,
        "idle" => idle::run(ctx).await,
        "failover" => failover::run(ctx).await,
        other => anyhow::bail!("no scenario {other}"),
    }
}

/// The `p`th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to `d` decimals (for the JSON lines).
pub fn round(x: f64, d: i32) -> f64 {
    let m = 10f64.powi(d);
    (x * m).round() / m
}
