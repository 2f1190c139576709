//! `cargo xtask bench`: idem's benchmarks, each beside a peer doing the same work on the same
//! machine in the same run (docs/BENCHMARKS.md).
//!
//! Every result is one JSON line on stdout (progress goes to stderr), also appended to
//! `results.jsonl` in the run directory (`target/bench/<stamp>/`, or `--out`); at the end a Markdown
//! table of the results against their goals (`table.md`) and two plots (`throughput.png`,
//! `lateness.png`) are written there, and with `--publish` copied to `docs/bench/`.
//!
//! Invariants: every process a scenario starts is gone when the scenario ends, however it ends
//! (an error, a panic, Ctrl-C); every database, vhost and Redis index it made is dropped; a peer
//! that fails or cannot be installed is a result line with an `error`, never a failed run. The exit
//! code is non-zero only when an idem measurement could not be taken (or on Ctrl-C): missed goals
//! and slow machines never fail the run.

mod api;
mod db;
mod machine;
mod ns;
mod peers;
mod plot;
mod procs;
mod scenarios;
mod stack;
mod table;

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use futures::FutureExt;
use serde_json::{json, Value};

use crate::binary;

/// The scenarios, in the order they run.
pub const SCENARIOS: [(&str, &str); 7] = [
    (
        "throughput",
        "20,000 no-op tasks end to end, per shape, beside Celery",
    ),
    (
        "peers",
        "graphile_worker and apalis on the same PostgreSQL, 20,000 jobs",
    ),
    (
        "submit",
        "single-task submissions per second, 32 keep-alive connections",
    ),
    ("latency", "submit → result round trips, one at a time"),
    (
        "schedule",
        "N one-second interval jobs: fires, misses, lateness, CPU, memory",
    ),
    ("idle", "100,000 far-future cron jobs: idle CPU and memory"),
    (
        "failover",
        "SIGKILL of one of 2 schedulers: how soon the fires resume",
    ),
];

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all): throughput, peers, submit, latency, schedule, idle,
    /// failover.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Tiny sizes and no peers: checks that the bench runs (CI), measures nothing worth quoting.
    /// Uses the debug binary unless --release is given.
    #[arg(long)]
    quick: bool,
    /// Measure idem only.
    #[arg(long)]
    no_peers: bool,
    /// Use the release binary (always so without --quick).
    #[arg(long)]
    release: bool,
    /// Tasks of the throughput and peers scenarios (default 20,000; quick 2,000).
    #[arg(long)]
    n: Option<usize>,
    /// Job counts of the schedule scenario (default 1000,10000,50000; quick 50).
    #[arg(long, value_delimiter = ',')]
    schedule_n: Vec<usize>,
    /// Seconds each schedule run is measured (default 60; quick 5).
    #[arg(long)]
    schedule_seconds: Option<u64>,
    /// Jobs of the idle scenario (default 100,000; quick 1,000).
    #[arg(long)]
    idle_jobs: Option<usize>,
    /// Where results.jsonl, table.md and the plots go (default target/bench/<stamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Copy table.md and the plots into docs/bench/ at the end.
    #[arg(long)]
    publish: bool,
    /// Measure nothing: write table.md and the plots again from DIR/results.jsonl (with
    /// --publish, copy them to docs/bench/).
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// `KEY=VALUE` for every idem process (repeatable), e.g. `--idem-env IDEM_WORKER_CONCURRENCY=32`.
    #[arg(long = "idem-env", value_name = "KEY=VALUE")]
    idem_env: Vec<String>,
}

/// The sizes of one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub throughput_n: usize,
    pub submit_seconds: f64,
    pub submit_max: usize,
    pub submit_conns: usize,
    pub latency_n: usize,
    pub schedule_n: Vec<usize>,
    pub schedule_seconds: u64,
    pub idle_jobs: usize,
    pub idle_seconds: u64,
}

impl Sizes {
    fn new(args: &BenchArgs) -> Sizes {
        let q = args.quick;
        Sizes {
            throughput_n: args.n.unwrap_or(if q { 2_000 } else { 20_000 }),
            submit_seconds: if q { 2.0 } else { 10.0 },
            submit_max: if q { 5_000 } else { 50_000 },
            submit_conns: 32,
            latency_n: if q { 100 } else { 1_000 },
            schedule_n: if !args.schedule_n.is_empty() {
                args.schedule_n.clone()
            } else if q {
                vec![50]
            } else {
                vec![1_000, 10_000, 50_000]
            },
            schedule_seconds: args.schedule_seconds.unwrap_or(if q { 5 } else { 60 }),
            idle_jobs: args.idle_jobs.unwrap_or(if q { 1_000 } else { 100_000 }),
            idle_seconds: if q { 3 } else { 30 },
        }
    }
}

/// What every scenario runs with, and what the run has gathered so far.
pub struct Ctx {
    pub quick: bool,
    /// Whether peers are measured (not with --quick or --no-peers).
    pub peers: bool,
    pub release: bool,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub sizes: Sizes,
    pub idem_env: Vec<(String, String)>,
    pub registry: ns::Registry,
    pub results: Vec<Value>,
    /// idem measurements that could not be taken.
    pub failures: usize,
    pub peers_state: peers::State,
}

impl Ctx {
    /// Prints a result as one JSON line, appends it to results.jsonl and keeps it for the table.
    pub fn emit(&mut self, mut v: Value) {
        // The machine is shared: the load when a result was taken says how far to trust it.
        if v["scenario"] != "machine" {
            if let (Some(o), Some(l)) = (v.as_object_mut(), load1()) {
                o.insert("load1".into(), json!(l));
            }
        }
        let line = json_line(&v);
        println!("{line}");
        let _ = std::io::stdout().flush();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("results.jsonl"))
        {
            let _ = writeln!(f, "{line}");
        }
        self.results.push(v);
    }

    /// An idem measurement that failed: a result line with the error, counted as a failure.
    pub fn emit_failure(&mut self, scenario: &str, shape: &str, e: &anyhow::Error) {
        self.failures += 1;
        eprintln!("bench: {scenario} {shape}: FAILED: {e:#}");
        self.emit(json!({
            "scenario": scenario, "system": "idem", "shape": shape, "error": format!("{e:#}"),
        }));
    }

    /// Progress, on stderr.
    pub fn note(&self, msg: &str) {
        eprintln!("bench: {msg}");
    }
}

/// The one-minute load average.
fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A JSON object on one line with `scenario`, `system` and `shape` first, the rest sorted.
pub fn json_line(v: &Value) -> String {
    let Some(obj) = v.as_object() else {
        return v.to_string();
    };
    let first = ["scenario", "system", "shape"];
    let mut parts: Vec<String> = Vec::new();
    for k in first {
        if let Some(x) = obj.get(k) {
            parts.push(format!("{}:{x}", Value::from(k)));
        }
    }
    for (k, x) in obj {
        if !first.contains(&k.as_str()) {
            parts.push(format!("{}:{x}", Value::from(k.as_str())));
        }
    }
    format!("{{{}}}", parts.join(","))
}

pub fn main(args: BenchArgs) -> ExitCode {
    if let Some(dir) = &args.report {
        return report_only(&args, dir);
    }
    let ids: Vec<String> = if args.scenario.is_empty() {
        SCENARIOS.iter().map(|(id, _)| (*id).to_owned()).collect()
    } else {
        args.scenario
            .iter()
            .map(|s| s.trim().to_ascii_lowercase())
            .collect()
    };
    if let Some(bad) = ids
        .iter()
        .find(|id| !SCENARIOS.iter().any(|(s, _)| s == id))
    {
        eprintln!(
            "bench: no scenario {bad:?}; the scenarios are {:?}",
            SCENARIOS.iter().map(|(s, _)| *s).collect::<Vec<_>>()
        );
        return ExitCode::from(2);
    }
    let mut idem_env = Vec::new();
    for kv in &args.idem_env {
        match kv.split_once('=') {
            Some((k, v)) if k.starts_with("IDEM_") => idem_env.push((k.to_owned(), v.to_owned())),
            _ => {
                eprintln!("bench: --idem-env wants IDEM_KEY=VALUE, got {kv:?}");
                return ExitCode::from(2);
            }
        }
    }
    let release = args.release || !args.quick;
    eprintln!(
        "bench: building idem ({})",
        if release { "release" } else { "debug" }
    );
    let bin = match binary::build_quietly(release) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let dir = args.out.clone().unwrap_or_else(|| {
        binary::workspace_root()
            .join("target")
            .join("bench")
            .join(format!("{stamp}{}", if args.quick { "-quick" } else { "" }))
    });
    if let Err(e) = std::fs::create_dir_all(dir.join("logs")) {
        eprintln!("bench: creating {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let _ = std::fs::remove_file(dir.join("results.jsonl"));
    let ctx = Ctx {
        quick: args.quick,
        peers: !args.quick && !args.no_peers,
        release,
        bin,
        dir,
        sizes: Sizes::new(&args),
        idem_env,
        registry: ns::Registry::default(),
        results: Vec::new(),
        failures: 0,
        peers_state: peers::State::default(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(run(ctx, ids, args.publish))
}

/// Writes table.md and the plots from the results, and with `publish` copies them to docs/bench/.
fn finish(ctx: &Ctx, publish: bool) {
    let table = table::render(ctx);
    println!("\n{table}");
    let _ = std::fs::write(ctx.dir.join("table.md"), &table);
    for (name, r) in plot::draw_all(ctx) {
        match r {
            Ok(()) => ctx.note(&format!("plot {}", ctx.dir.join(name).display())),
            Err(e) => ctx.note(&format!("plot {name} not drawn: {e:#}")),
        }
    }
    if publish {
        let docs = binary::workspace_root().join("docs").join("bench");
        let _ = std::fs::create_dir_all(&docs);
        for f in ["table.md", "throughput.png", "lateness.png"] {
            let from = ctx.dir.join(f);
            if from.is_file() {
                match std::fs::copy(&from, docs.join(f)) {
                    Ok(_) => ctx.note(&format!("published docs/bench/{f}")),
                    Err(e) => ctx.note(&format!("publishing {f}: {e}")),
                }
            }
        }
    }
}

/// `--report DIR`: the table and plots again from DIR/results.jsonl, measuring nothing.
fn report_only(args: &BenchArgs, dir: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(dir.join("results.jsonl")) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "bench: reading {}: {e}",
                dir.join("results.jsonl").display()
            );
            return ExitCode::from(2);
        }
    };
    let results: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let m = results.iter().find(|r| r["scenario"] == "machine");
    let ctx = Ctx {
        quick: m.and_then(|m| m["quick"].as_bool()).unwrap_or(false),
        peers: m.and_then(|m| m["peers"].as_bool()).unwrap_or(true),
        release: m.is_some_and(|m| m["binary"] == "release"),
        bin: PathBuf::new(),
        dir: dir.to_owned(),
        sizes: Sizes::new(args),
        idem_env: Vec::new(),
        registry: ns::Registry::default(),
        results,
        failures: 0,
        peers_state: peers::State::default(),
    };
    finish(&ctx, args.publish);
    ExitCode::SUCCESS
}

async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(mut ctx: Ctx, ids: Vec<String>, publish: bool) -> ExitCode {
    let started = Instant::now();
    // One listener for the whole run, so that a Ctrl-C between two scenarios is not lost.
    let cancel = tokio_util::sync::CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            interrupted().await;
            cancel.cancel();
        });
    }
    ctx.note(&format!(
        "scenarios {ids:?} ({}, {} binary{}), results in {}",
        if ctx.quick { "quick" } else { "full size" },
        if ctx.release { "release" } else { "debug" },
        if ctx.peers {
            ", with peers"
        } else {
            ", no peers"
        },
        ctx.dir.display()
    ));
    for (name, port) in [("PostgreSQL", 5432), ("Redis", 6379), ("RabbitMQ", 5672)] {
        if !crate::cmd::port_open(port).await {
            ctx.note(&format!(
                "{name} does not answer on 127.0.0.1:{port}; the scenarios that need it will fail"
            ));
        }
    }
    let machine = crate::rig::Services::machine();
    for d in crate::services::drop_leftovers(&machine.pg, &machine.rabbit).await {
        ctx.note(&format!(
            "dropped the leftover {d} of a runner that is gone"
        ));
    }
    if ctx.peers {
        let needs_rust = ids
            .iter()
            .any(|i| matches!(i.as_str(), "throughput" | "peers" | "latency"));
        let needs_python = ids
            .iter()
            .any(|i| matches!(i.as_str(), "throughput" | "latency" | "schedule"));
        peers::prepare(&mut ctx, needs_rust, needs_python).await;
    }
    let m = machine::describe(&ctx).await;
    ctx.emit(m);
    let mut stop = false;
    for id in &ids {
        if cancel.is_cancelled() {
            stop = true;
            break;
        }
        let t = Instant::now();
        ctx.note(&format!("== {id}"));
        let body = AssertUnwindSafe(scenarios::run(&mut ctx, id)).catch_unwind();
        let outcome = tokio::select! {
            r = body => match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(panic) => Some(anyhow::anyhow!(
                    "panicked: {}",
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default()
                )),
            },
            _ = cancel.cancelled() => {
                stop = true;
                Some(anyhow::anyhow!("interrupted"))
            }
        };
        if let Some(e) = outcome {
            ctx.emit_failure(id, "-", &e);
        }
        for p in ctx.registry.drop_all().await {
            ctx.note(&format!("cleanup: {p}"));
        }
        ctx.note(&format!("{id} took {:.0} s", t.elapsed().as_secs_f64()));
        if stop {
            break;
        }
    }
    finish(&ctx, publish);
    ctx.note(&format!(
        "done in {:.0} s: {} result lines, {} idem measurement(s) failed; results in {}",
        started.elapsed().as_secs_f64(),
        ctx.results.len(),
        ctx.failures,
        ctx.dir.display()
    ));
    if stop {
        ExitCode::from(130)
    } else if ctx.failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
