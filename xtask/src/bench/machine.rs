//! The `{"scenario":"machine",...}` line: the machine the numbers were taken on and the versions of
//! everything measured. A version that cannot be read is `null`, never an error.

use std::time::Duration;

use serde_json::{json, Map, Value};
use sqlx::Connection;

use super::Ctx;
use crate::{binary, cmd};

async fn out(program: &str, args: &[&str]) -> Option<String> {
    cmd::run(program, args, Duration::from_secs(30))
        .await
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
}

fn mem_gib() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
}

async fn postgres_version() -> Option<String> {
    let url = crate::rig::Services::machine().pg.url("postgres");
    let mut c = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url))
        .await
        .ok()?
        .ok()?;
    let v: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut c)
        .await
        .ok()?;
    let _ = c.close().await;
    Some(v)
}

async fn redis_version() -> Option<String> {
    let client = redis::Client::open("redis://127.0.0.1:6379/0").ok()?;
    let mut c = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
}

/// The peer crates' versions, as pinned in bench/peers/Cargo.toml.
fn pinned(krate: &str) -> Option<String> {
    let toml =
        std::fs::read_to_string(binary::workspace_root().join("bench/peers/Cargo.toml")).ok()?;
    let line = toml
        .lines()
        .find(|l| l.starts_with(&format!("{krate} = ")) && l.contains("version = "))?;
    let v = line.split("version = \"").nth(1)?.split('"').next()?;
    Some(v.trim_start_matches('=').to_owned())
}

pub async fn describe(ctx: &Ctx) -> Value {
    let root = binary::workspace_root();
    let root_s = root.to_string_lossy().into_owned();
    let rev = out("git", &["-C", &root_s, "rev-parse", "--short=12", "HEAD"]).await;
    let dirty = out(
        "git",
        &["-C", &root_s, "status", "--porcelain", "--", "crates"],
    )
    .await
    .is_some();
    let bin = ctx.bin.to_string_lossy().into_owned();
    let mut versions = Map::new();
    let strip = |v: Option<String>, prefix: &str| {
        v.map(|s| s.strip_prefix(prefix).map(str::to_owned).unwrap_or(s))
    };
    versions.insert(
        "idem".into(),
        json!(strip(out(&bin, &["--version"]).await, "idem ")),
    );
    versions.insert(
        "idem_git".into(),
        json!(rev.map(|r| if dirty { format!("{r}+dirty") } else { r })),
    );
    versions.insert("postgresql".into(), json!(postgres_version().await));
    versions.insert(
        "rabbitmq".into(),
        json!(out("rabbitmqctl", &["version"]).await),
    );
    versions.insert("redis".into(), json!(redis_version().await));
    versions.insert(
        "rustc".into(),
        json!(strip(out("rustc", &["--version"]).await, "rustc ")),
    );
    versions.insert(
        "python".into(),
        json!(strip(out("python3", &["--version"]).await, "Python ")),
    );
    for (k, v) in &ctx.peers_state.versions {
        versions.insert(k.clone(), json!(v));
    }
    versions.insert("graphile_worker".into(), json!(pinned("graphile_worker")));
    versions.insert("apalis".into(), json!(pinned("apalis")));
    json!({
        "scenario": "machine",
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu_model(),
        "mem_gib": mem_gib(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        "load_avg": std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        "binary": if ctx.release { "release" } else { "debug" },
        "quick": ctx.quick,
        "peers": ctx.peers,
        "started_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "versions": versions,
    })
}
