//! `cargo xtask bench`: the benchmarks beside their peers (docs/BENCHMARKS.md; see `bench/`).
//!
//! `cargo xtask chaos`: the fault-injection suite. It builds `idem`, runs it as several processes
//! against PostgreSQL, RabbitMQ and Redis (each run in its own namespaces), drives a workload,
//! injects faults on a schedule derived from the seed, and checks the history the client, an HTTP
//! receiver and the store recorded. See docs/RELIABILITY.md.
//!
//! Invariant: whatever happens — a failed check, a panic, SIGINT/SIGTERM, a deadline — every
//! scenario's teardown runs, and before the runner exits the machine's services are checked and
//! started if one is down. The exit code is 0 only when every criterion of every scenario passed.

mod bench;
mod binary;
mod client;
mod cluster;
mod cmd;
mod fires;
mod oracle;
mod private;
mod probe;
mod proxy;
mod receiver;
mod report;
mod rig;
mod rng;
mod scenarios;
mod services;
mod store;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use futures::FutureExt;

use report::Report;
use rig::{Opts, Rig};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "idem's project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// The fault-injection suite (docs/RELIABILITY.md).
    Chaos(ChaosArgs),
    /// The benchmarks, each beside a peer on the same machine (docs/BENCHMARKS.md).
    Bench(bench::BenchArgs),
}

#[derive(Debug, Args)]
struct ChaosArgs {
    /// Scenarios to run (S1..S8), repeated or comma-separated.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Every scenario.
    #[arg(long)]
    all: bool,
    /// Small workloads (every scenario unless --scenario names some): well under a minute each.
    #[arg(long)]
    smoke: bool,
    /// Build and run the release binary.
    #[arg(long)]
    release: bool,
    /// The seed of the workloads and the fault schedules (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the databases, vhosts and Redis indexes of failed scenarios for inspection.
    #[arg(long)]
    keep: bool,
    /// `KEY=VALUE` for every idem process, over the runner's own settings (repeatable), e.g.
    /// `--idem-env IDEM_REDELIVER_SECONDS=4` to see what a setting changes.
    #[arg(long = "idem-env", value_name = "KEY=VALUE")]
    idem_env: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Task::Chaos(args) => args,
        Task::Bench(args) => return bench::main(args),
    };
    let ids: Vec<String> = if args.all || (args.smoke && args.scenario.is_empty()) {
        scenarios::ALL
            .iter()
            .map(|(id, _)| (*id).to_owned())
            .collect()
    } else {
        args.scenario
            .iter()
            .map(|s| s.trim().to_ascii_uppercase())
            .collect()
    };
    if ids.is_empty() {
        eprintln!("chaos: name scenarios with --scenario S1,S2, or pass --all or --smoke");
        return ExitCode::from(2);
    }
    if let Some(bad) = ids.iter().find(|id| scenarios::title(id).is_none()) {
        eprintln!(
            "chaos: no scenario {bad}; the scenarios are {:?}",
            scenarios::ALL
        );
        return ExitCode::from(2);
    }
    let mut idem_env = Vec::new();
    for kv in &args.idem_env {
        match kv.split_once('=') {
            Some((k, v)) if k.starts_with("IDEM_") => idem_env.push((k.to_owned(), v.to_owned())),
            _ => {
                eprintln!("chaos: --idem-env wants IDEM_KEY=VALUE, got {kv:?}");
                return ExitCode::from(2);
            }
        }
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let bin = match binary::build(args.release) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            return ExitCode::from(2);
        }
    };
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let dir: PathBuf = binary::workspace_root()
        .join("target")
        .join("chaos")
        .join(format!(
            "{stamp}-seed{seed}{}",
            if args.smoke { "-smoke" } else { "" }
        ));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("chaos: creating {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let opts = Opts {
        seed,
        smoke: args.smoke,
        release: args.release,
        bin,
        dir,
        keep: args.keep,
        idem_env,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(run_all(opts, ids))
}

async fn run_all(opts: Opts, ids: Vec<String>) -> ExitCode {
    println!(
        "chaos: seed {} ({}), scenarios {ids:?}, results in {}",
        opts.seed,
        if opts.smoke { "smoke" } else { "full" },
        opts.dir.display()
    );
    for note in services::ensure_machine_services().await {
        println!("chaos: {note}");
    }
    let machine = rig::Services::machine();
    for d in services::drop_leftovers(&machine.pg, &machine.rabbit).await {
        println!("chaos: dropped the leftover {d} of a runner that is gone");
    }
    let mut reports = Vec::new();
    let mut interrupted = false;
    for id in &ids {
        let (report, stop) = run_one(&opts, id).await;
        println!("{}", report.json_line());
        reports.push(report);
        if stop {
            interrupted = true;
            break;
        }
    }
    for note in services::ensure_machine_services().await {
        println!("chaos: {note}");
    }
    let table = report::table(&reports);
    println!("\n{table}");
    let lines: String = reports.iter().map(|r| r.json_line() + "\n").collect();
    let _ = std::fs::write(opts.dir.join("results.jsonl"), lines);
    let _ = std::fs::write(opts.dir.join("table.md"), &table);
    let failed = reports.iter().filter(|r| !r.pass).count();
    println!(
        "chaos: {} of {} scenarios passed (seed {}); results in {}",
        reports.len() - failed,
        reports.len(),
        opts.seed,
        opts.dir.display()
    );
    if interrupted {
        ExitCode::from(130)
    } else if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The longest one scenario may take before it is stopped and failed.
fn scenario_limit(smoke: bool) -> Duration {
    if smoke {
        Duration::from_secs(240)
    } else {
        Duration::from_secs(1800)
    }
}

async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs one scenario and tears it down; (its report, whether the runner was interrupted).
async fn run_one(opts: &Opts, id: &str) -> (Report, bool) {
    let title = scenarios::title(id).unwrap_or("?");
    let started = Instant::now();
    let name = services::namespace(id);
    let setup = async {
        let services = scenarios::services(id, opts, &name).await?;
        Rig::new(opts, id, title, services).await
    };
    let mut rig = tokio::select! {
        r = setup => match r {
            Ok(rig) => rig,
            Err(e) => {
                let mut report = Report::new(id, title, opts.seed, opts.smoke, opts.release);
                report.error = Some(format!("setting up: {e:#}"));
                println!("  [{id}] FAIL setting up: {e:#}");
                report.finish();
                return (report, false);
            }
        },
        _ = interrupted() => {
            let mut report = Report::new(id, title, opts.seed, opts.smoke, opts.release);
            report.error = Some("interrupted while setting up".into());
            return (report, true);
        }
    };
    let mut stop = false;
    let limit = scenario_limit(opts.smoke);
    let body = AssertUnwindSafe(scenarios::run(id, &mut rig)).catch_unwind();
    let outcome = tokio::select! {
        r = tokio::time::timeout(limit, body) => match r {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(format!("{e:#}")),
            Ok(Err(panic)) => Some(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            )),
            Err(_) => Some(format!("did not finish within {limit:?}")),
        },
        _ = interrupted() => {
            stop = true;
            Some("interrupted".to_owned())
        }
    };
    if let Some(e) = outcome {
        println!("  [{id}] FAIL: {e}");
        rig.report.error = Some(e);
    }
    rig.report.finish();
    let (mut report, problems) = rig.teardown().await;
    for p in problems {
        println!("  [{id}] teardown: {p}");
    }
    report.duration_s = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    println!(
        "[{id}] {} in {:.1} s",
        if report.pass { "PASS" } else { "FAIL" },
        report.duration_s
    );
    (report, stop)
}
