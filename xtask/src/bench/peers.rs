//! The peers idem is measured beside, each on its own fresh namespace of the machine's services:
//!
//! * graphile_worker 0.14 and apalis 1.0 (`bench/peers/`, a standalone crate built here into
//!   `target/peers`), on a fresh PostgreSQL database;
//! * Celery 5 (`bench/peers/celery/`), prefork `-c 2`, its own RabbitMQ vhost as broker and its own
//!   Redis database index as result backend;
//! * APScheduler 3 (`bench/peers/apscheduler/aps.py`) with its SQLAlchemy job store on a fresh
//!   PostgreSQL database.
//!
//! Invariant: nothing here fails the run. A peer that cannot be built, installed or run is a result
//! line with an `error` (and a row of the table that says so).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::procs::{Launch, Proc};
use super::Ctx;
use crate::binary;

/// What the run knows about its peers.
#[derive(Debug, Default)]
pub struct State {
    /// The directory of the built peer binaries, or why there is none.
    rust: Option<Result<PathBuf, String>>,
    /// Whether the Python peers can run, or why not.
    python: Option<Result<(), String>>,
    /// Whether the Rust peers' throughput was measured already.
    rust_measured: bool,
    /// Versions found, for the machine line.
    pub versions: Vec<(String, String)>,
}

/// The pinned Python packages (`bench/peers/requirements.txt`).
const REQUIREMENTS: &str = "bench/peers/requirements.txt";
/// The concurrency of the Rust peers' workers (as idem's default worker concurrency).
const RUST_PEER_CONCURRENCY: &str = "16";

/// Builds the Rust peers and checks (or installs) the Python ones, before anything is measured so
/// that no build competes with a measurement.
pub async fn prepare(ctx: &mut Ctx, rust: bool, python: bool) {
    if rust && ctx.peers_state.rust.is_none() {
        let r = build_rust(ctx).await.map_err(|e| format!("{e:#}"));
        if let Err(e) = &r {
            ctx.note(&format!("the Rust peers are not measured: {e}"));
        }
        ctx.peers_state.rust = Some(r);
    }
    if python && ctx.peers_state.python.is_none() {
        let r = ensure_python(ctx).await.map_err(|e| format!("{e:#}"));
        if let Err(e) = &r {
            ctx.note(&format!(
                "the Python peers (Celery, APScheduler) are skipped: {e}"
            ));
        }
        ctx.peers_state.python = Some(r);
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| binary::workspace_root().join("target"))
}

async fn build_rust(ctx: &Ctx) -> anyhow::Result<PathBuf> {
    let root = binary::workspace_root();
    let target = target_dir().join("peers");
    let log = ctx.dir.join("logs").join("peers-build.log");
    ctx.note(&format!(
        "building the Rust peers (cargo build --release --manifest-path bench/peers/Cargo.toml, \
         into {}; log {})",
        target.display(),
        log.display()
    ));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::fs::File::create(&log)?;
    let mut cmd = tokio::process::Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--manifest-path",
            "bench/peers/Cargo.toml",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .kill_on_drop(true);
    // As in binary::build: the variables `cargo run` set for xtask must not reach the inner build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k == "LD_LIBRARY_PATH"
            || k == "OUT_DIR"
        {
            cmd.env_remove(&k);
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(3600), cmd.status())
        .await
        .context("the peers build did not finish within an hour")??;
    if !status.success() {
        bail!(
            "cargo build of bench/peers failed ({status}):\n{}",
            crate::cluster::tail(&log, 15)
        );
    }
    let bin = target.join("release");
    for b in ["peer-graphile", "peer-apalis"] {
        if !bin.join(b).is_file() {
            bail!("{} was not built", bin.join(b).display());
        }
    }
    Ok(bin)
}

const PY_CHECK: &str = "import celery, redis, apscheduler, sqlalchemy, psycopg2; \
                        print(celery.__version__, apscheduler.__version__)";

async fn python_versions() -> anyhow::Result<(String, String)> {
    let out = crate::cmd::run("python3", &["-c", PY_CHECK], Duration::from_secs(60)).await?;
    let mut it = out.split_whitespace();
    Ok((
        it.next().unwrap_or("?").to_owned(),
        it.next().unwrap_or("?").to_owned(),
    ))
}

async fn ensure_python(ctx: &mut Ctx) -> anyhow::Result<()> {
    let versions = match python_versions().await {
        Ok(v) => v,
        Err(_) => {
            ctx.note(&format!(
                "installing the Python peers: python3 -m pip install --quiet -r {REQUIREMENTS}"
            ));
            let req = binary::workspace_root().join(REQUIREMENTS);
            crate::cmd::run(
                "python3",
                &[
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                    req.to_str().context("path is not UTF-8")?,
                ],
                Duration::from_secs(900),
            )
            .await
            .context("pip install")?;
            python_versions().await?
        }
    };
    ctx.peers_state
        .versions
        .push(("celery".into(), versions.0.clone()));
    ctx.peers_state
        .versions
        .push(("apscheduler".into(), versions.1.clone()));
    Ok(())
}

/// A result line for a peer that could not be measured.
fn failed(scenario: &str, system: &str, shape: &str, error: &str) -> Value {
    json!({"scenario": scenario, "system": system, "shape": shape, "error": error})
}

/// Runs a peer process to its end (at most `limit`) with its output in `logs/<label>.log`; the
/// last JSON object line it printed, or an error with the log's tail.
async fn run_to_end(ctx: &Ctx, launch: Launch<'_>, limit: Duration) -> Result<Value, String> {
    let log = ctx.dir.join("logs").join(format!("{}.log", launch.label));
    let mut proc = Proc::spawn(launch, &log).map_err(|e| format!("{e:#}"))?;
    let deadline = tokio::time::Instant::now() + limit;
    while !proc.exited() {
        if tokio::time::Instant::now() > deadline {
            let tail = proc.tail(10);
            proc.stop(Duration::from_secs(2)).await;
            return Err(format!(
                "no end within {limit:?}; its output ended:\n{tail}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let found = text
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok());
    match found {
        Some(v) if v.get("error").is_none() => Ok(v),
        Some(v) => Err(v["error"].as_str().unwrap_or("error").to_owned()),
        None => Err(format!(
            "printed no result; its output ended:\n{}",
            proc.tail(10)
        )),
    }
}

fn python_ready(ctx: &Ctx) -> Result<(), String> {
    match &ctx.peers_state.python {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(format!("skipped: {e}")),
        None => Err("skipped: the Python peers were not prepared".into()),
    }
}

fn rust_bin(ctx: &Ctx, name: &str) -> Result<PathBuf, String> {
    match &ctx.peers_state.rust {
        Some(Ok(dir)) => Ok(dir.join(name)),
        Some(Err(e)) => Err(format!("not built: {e}")),
        None => Err("not built".into()),
    }
}

/// One run of a Rust peer binary against a fresh database.
async fn rust_peer(ctx: &Ctx, bin: &str, label: &str, args: &[&str]) -> Result<Value, String> {
    let program = rust_bin(ctx, bin)?;
    let ns = ctx
        .registry
        .create(false)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let launch = Launch {
        label,
        program: &program,
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env: vec![("PEER_PG_URL".into(), ns.database_url.clone())],
        cwd: None,
        pdeathsig: true,
    };
    let r = run_to_end(ctx, launch, Duration::from_secs(900)).await;
    ctx.registry.drop_one(&ns.name).await;
    r
}

/// `peers`: graphile_worker and apalis, `--live --tuned`, N jobs each (once per run: the
/// throughput scenario reuses these lines).
pub async fn rust_throughput(ctx: &mut Ctx) {
    if !ctx.peers {
        ctx.note("peers: not measured (--quick or --no-peers)");
        return;
    }
    if ctx.peers_state.rust_measured {
        return;
    }
    ctx.peers_state.rust_measured = true;
    let n = ctx.sizes.throughput_n.to_string();
    for (system, bin) in [
        ("graphile_worker", "peer-graphile"),
        ("apalis", "peer-apalis"),
    ] {
        ctx.note(&format!("peers {system}: {n} jobs, --live --tuned"));
        let shape = "live tuned c16";
        let r = rust_peer(
            ctx,
            bin,
            &format!("peers-{system}"),
            &[
                "--n",
                &n,
                "--concurrency",
                RUST_PEER_CONCURRENCY,
                "--live",
                "--tuned",
            ],
        )
        .await;
        let v = match r {
            Ok(p) => json!({
                "scenario": "peers",
                "system": system,
                "shape": shape,
                "n": p["n"],
                "per_s": p["work_per_s"].as_f64().map(f64::round),
                "seconds": p["work_s"],
                "insert_per_s": p["insert_per_s"].as_f64().map(f64::round),
                "config": p["config"],
            }),
            Err(e) => failed("peers", system, shape, &e),
        };
        ctx.emit(v);
    }
}

/// graphile_worker's latency: add one job → its handler starts, N times (defaults: LISTEN/NOTIFY).
pub async fn graphile_latency(ctx: &Ctx, n: usize) -> Value {
    let shape = "add -> handler start";
    ctx.note(&format!("latency graphile_worker: {n} jobs one at a time"));
    let n_s = n.to_string();
    match rust_peer(
        ctx,
        "peer-graphile",
        "latency-graphile_worker",
        &["--latency", &n_s, "--concurrency", RUST_PEER_CONCURRENCY],
    )
    .await
    {
        Ok(p) => json!({
            "scenario": "latency",
            "system": "graphile_worker",
            "shape": shape,
            "n": p["samples"],
            "p50_ms": p["p50_ms"],
            "p90_ms": p["p90_ms"],
            "p99_ms": p["p99_ms"],
            "max_ms": p["max_ms"],
            "mean_ms": p["mean_ms"],
            "measures": "add job called -> handler started (no result read back)",
        }),
        Err(e) => failed("latency", "graphile_worker", shape, &e),
    }
}

fn celery_dir() -> PathBuf {
    binary::workspace_root()
        .join("bench")
        .join("peers")
        .join("celery")
}

/// A Celery worker (prefork -c 2) on its own vhost and Redis index, `bench.py MODE N` against it.
async fn celery(ctx: &Ctx, mode: &str, n: usize) -> Result<Value, String> {
    python_ready(ctx)?;
    let ns = ctx
        .registry
        .create(true)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let r = celery_in(ctx, mode, n, &ns).await;
    for p in ctx.registry.drop_one(&ns.name).await {
        ctx.note(&format!("cleanup: {p}"));
    }
    r
}

async fn celery_in(
    ctx: &Ctx,
    mode: &str,
    n: usize,
    ns: &super::ns::Namespace,
) -> Result<Value, String> {
    let (amqp, _, redis) = ns.broker.clone().ok_or("no broker namespace")?;
    let dir = celery_dir();
    let env = vec![
        ("BROKER".to_owned(), amqp),
        ("BACKEND".to_owned(), redis),
        ("PYTHONDONTWRITEBYTECODE".to_owned(), "1".to_owned()),
    ];
    let python = Path::new("python3");
    let worker_log = ctx
        .dir
        .join("logs")
        .join(format!("celery-{mode}-worker.log"));
    let worker = Proc::spawn(
        Launch {
            label: "celery-worker",
            program: python,
            args: [
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "-P",
                "prefork",
                "-c",
                "2",
                "--loglevel",
                "warning",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            env: env.clone(),
            cwd: Some(&dir),
            pdeathsig: true,
        },
        &worker_log,
    )
    .map_err(|e| format!("{e:#}"))?;
    let driver = |label: String, args: Vec<String>| {
        let env = env.clone();
        let dir = dir.clone();
        async move {
            run_to_end(
                ctx,
                Launch {
                    label: &label,
                    program: python,
                    args,
                    env,
                    cwd: Some(&dir),
                    pdeathsig: true,
                },
                Duration::from_secs(900),
            )
            .await
        }
    };
    let ready = driver(
        format!("celery-{mode}-ping"),
        vec!["bench.py".into(), "ping".into(), "60".into()],
    )
    .await;
    let r = match ready {
        Ok(_) => {
            driver(
                format!("celery-{mode}"),
                vec!["bench.py".into(), mode.into(), n.to_string()],
            )
            .await
        }
        Err(e) => Err(format!(
            "the worker did not answer a ping: {e}\nworker log:\n{}",
            worker.tail(10)
        )),
    };
    worker.stop(Duration::from_secs(10)).await;
    r
}

pub async fn celery_throughput(ctx: &Ctx, n: usize) -> Value {
    let shape = "prefork -c 2, RabbitMQ + Redis";
    ctx.note(&format!("throughput celery: {n} tasks"));
    match celery(ctx, "throughput", n).await {
        Ok(p) => json!({
            "scenario": "throughput",
            "system": "celery",
            "shape": shape,
            "n": p["n"],
            "per_s": p["per_s"],
            "seconds": p["seconds"],
            "submit_per_s": p["submit_per_s"],
            "version": p["celery"],
        }),
        Err(e) => failed("throughput", "celery", shape, &e),
    }
}

pub async fn celery_latency(ctx: &Ctx, n: usize) -> Value {
    let shape = "prefork -c 2, RabbitMQ + Redis";
    ctx.note(&format!("latency celery: {n} round trips"));
    match celery(ctx, "latency", n).await {
        Ok(p) => json!({
            "scenario": "latency",
            "system": "celery",
            "shape": shape,
            "n": p["n"],
            "p50_ms": p["p50_ms"],
            "p90_ms": p["p90_ms"],
            "p99_ms": p["p99_ms"],
            "max_ms": p["max_ms"],
            "mean_ms": p["mean_ms"],
            "measures": ".delay() called -> .get() returned",
            "version": p["celery"],
        }),
        Err(e) => failed("latency", "celery", shape, &e),
    }
}

/// APScheduler 3, N one-second interval jobs in its PostgreSQL job store for `secs` seconds.
pub async fn apscheduler(ctx: &Ctx, n: usize, secs: u64) -> Value {
    let shape = "pg job store";
    let r = async {
        python_ready(ctx)?;
        let ns = ctx
            .registry
            .create(false)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let url = format!("postgresql+psycopg2://postgres@127.0.0.1:5432/{}", ns.name);
        let script = binary::workspace_root().join("bench/peers/apscheduler/aps.py");
        // Adding jobs to the SQLAlchemy store runs at a few hundred per second.
        let limit = Duration::from_secs(secs + 120 + n as u64 / 100);
        let r = run_to_end(
            ctx,
            Launch {
                label: &format!("schedule-apscheduler-{n}"),
                program: Path::new("python3"),
                args: vec![
                    script.to_string_lossy().into_owned(),
                    n.to_string(),
                    secs.to_string(),
                    url,
                ],
                env: vec![("PYTHONDONTWRITEBYTECODE".into(), "1".into())],
                cwd: None,
                pdeathsig: true,
            },
            limit,
        )
        .await;
        ctx.registry.drop_one(&ns.name).await;
        r
    }
    .await;
    match r {
        Ok(mut p) => {
            if let Some(o) = p.as_object_mut() {
                o.insert("scenario".into(), json!("schedule"));
                o.insert("system".into(), json!("apscheduler"));
                o.insert("shape".into(), json!(shape));
            }
            p
        }
        Err(e) => {
            let mut v = failed("schedule", "apscheduler", shape, &e);
            v["jobs"] = json!(n);
            v["seconds"] = json!(secs);
            v
        }
    }
}
