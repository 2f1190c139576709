//! One idem deployment, started fresh for one measurement and stopped after it:
//!
//! * `embedded`: one `idem serve` on a new SQLite file in a temporary directory;
//! * `pg`: a new PostgreSQL database, `idem migrate`, then 1 api + 1 scheduler + 2 workers;
//! * `full`: the same with RabbitMQ (its own vhost) and Redis (its own database index).
//!
//! Invariant: a stack's processes die when it is dropped (see `procs.rs`); its database, vhost and
//! Redis index are dropped by [`Stack::finish`] or, if that never runs, by the runner's registry.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

use super::api;
use super::ns::Namespace;
use super::procs::{Launch, Proc};
use super::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Embedded,
    Pg,
    Full,
}

impl Shape {
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Embedded => "embedded",
            Shape::Pg => "pg",
            Shape::Full => "full",
        }
    }
}

pub struct Stack {
    /// The API's base URL.
    pub base: String,
    pub procs: Vec<Proc>,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    ns: Option<Namespace>,
    _tmp: Option<tempfile::TempDir>,
}

/// The next port to try: 87xx, moving on with every start so that a port just closed is not
/// reused at once.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

fn pick_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let p = 8700 + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 100;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port in 8700..8799")
}

impl Stack {
    /// Starts `shape` with the run's settings plus `extra` (`KEY=VALUE` pairs for every process);
    /// `label` names the log files. The pg and full shapes run 1 scheduler and 2 workers.
    pub async fn start(
        ctx: &Ctx,
        shape: Shape,
        label: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Stack> {
        Stack::start_with(ctx, shape, label, extra, 1, 2).await
    }

    /// As [`Stack::start`] with `schedulers` and `workers` processes (pg and full shapes).
    pub async fn start_with(
        ctx: &Ctx,
        shape: Shape,
        label: &str,
        extra: &[(&str, &str)],
        schedulers: usize,
        workers: usize,
    ) -> anyhow::Result<Stack> {
        let port = pick_port()?;
        let bind = format!("127.0.0.1:{port}");
        let base = format!("http://{bind}");
        let mut env: Vec<(String, String)> = vec![
            ("IDEM_LOG".into(), "warn".into()),
            ("IDEM_LOG_FORMAT".into(), "text".into()),
            ("NO_COLOR".into(), "1".into()),
        ];
        for (k, v) in extra {
            env.push(((*k).into(), (*v).into()));
        }
        let (database_url, ns, tmp) = match shape {
            Shape::Embedded => {
                let tmp = tempfile::Builder::new()
                    .prefix("idem-bench-")
                    .tempdir()
                    .context("creating a temporary directory")?;
                let url = format!("sqlite://{}", tmp.path().join("idem.db").display());
                (url, None, Some(tmp))
            }
            Shape::Pg | Shape::Full => {
                let ns = ctx.registry.create(shape == Shape::Full).await?;
                (ns.database_url.clone(), Some(ns), None)
            }
        };
        env.push(("IDEM_DATABASE_URL".into(), database_url.clone()));
        if let Some((amqp, _, redis)) = ns.as_ref().and_then(|n| n.broker.clone()) {
            env.push(("IDEM_BROKER_URL".into(), amqp));
            env.push(("IDEM_REDIS_URL".into(), redis));
        }
        // The run's --idem-env settings come last and win.
        for (k, v) in &ctx.idem_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let mut stack = Stack {
            base: base.clone(),
            procs: Vec::new(),
            database_url,
            ns,
            _tmp: tmp,
        };
        let http = api::client();
        let log =
            |role: &str| -> PathBuf { ctx.dir.join("logs").join(format!("{label}-{role}.log")) };
        let launch = |role: &str, args: Vec<String>, env: Vec<(String, String)>| Launch {
            label: "",
            program: &ctx.bin,
            args: std::iter::once(role.to_owned()).chain(args).collect(),
            env,
            cwd: None,
            pdeathsig: true,
        };
        match shape {
            Shape::Embedded => {
                let mut l = launch("serve", vec!["--bind".into(), bind.clone()], env.clone());
                l.label = "serve";
                stack.procs.push(Proc::spawn(l, &log("serve"))?);
                stack.wait_up(&http).await?;
            }
            Shape::Pg | Shape::Full => {
                let pairs: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                crate::cmd::run_env(
                    ctx.bin.to_str().context("binary path is not UTF-8")?,
                    &["migrate"],
                    &pairs,
                    Duration::from_secs(120),
                )
                .await
                .context("idem migrate")?;
                env.push(("IDEM_NO_MIGRATE".into(), "true".into()));
                let mut roles: Vec<(&str, String, Vec<String>)> =
                    vec![("api", "api".into(), vec!["--bind".into(), bind.clone()])];
                for i in 0..schedulers {
                    // One scheduler is "scheduler", as the CPU columns name it; several are numbered.
                    let name = if schedulers == 1 {
                        "scheduler".to_owned()
                    } else {
                        format!("scheduler-{i}")
                    };
                    roles.push(("scheduler", name, vec![]));
                }
                for i in 0..workers {
                    roles.push(("worker", format!("worker-{i}"), vec![]));
                }
                for (role, name, args) in roles {
                    let mut l = launch(role, args, env.clone());
                    l.label = &name;
                    stack.procs.push(Proc::spawn(l, &log(&name))?);
                }
                stack.wait_up(&http).await?;
                api::wait_workers(&http, &base, workers, Duration::from_secs(60)).await?;
                // The scheduler says nothing at `warn`; give it a moment to take its lock.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(stack)
    }

    async fn wait_up(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let ready = api::wait_ready(http, &self.base, Duration::from_secs(60));
        tokio::pin!(ready);
        loop {
            tokio::select! {
                r = &mut ready => return r,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(p) = self.procs.iter_mut().find_map(|p| p.exited().then_some(p)) {
                        bail!("{} exited while starting; its log:\n{}", p.label, p.tail(20));
                    }
                }
            }
        }
    }

    /// (label, pid) of every process, for CPU and memory readings.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .map(|p| (p.label.clone(), p.pid))
            .collect()
    }

    /// Whether a process has died; its label and log tail if so.
    pub fn dead(&mut self) -> Option<String> {
        self.procs
            .iter_mut()
            .find_map(|p| p.exited().then_some(p))
            .map(|p| format!("{} exited; its log:\n{}", p.label, p.tail(20)))
    }

    /// SIGKILL to the process labelled `label`, waiting until it is gone.
    pub async fn kill9(&mut self, label: &str) -> anyhow::Result<()> {
        let i = self
            .procs
            .iter()
            .position(|p| p.label == label)
            .with_context(|| format!("no process {label}"))?;
        self.procs.remove(i).kill().await;
        Ok(())
    }

    /// Stops the processes (SIGTERM, then SIGKILL after 5 s); the database stays for reading.
    pub async fn stop_procs(&mut self) {
        for p in self.procs.drain(..) {
            p.stop(Duration::from_secs(5)).await;
        }
    }

    /// Stops what runs and drops the database, vhost and Redis index (the SQLite directory goes
    /// with `self`). Problems are reported, not raised.
    pub async fn finish(mut self, ctx: &Ctx) {
        self.stop_procs().await;
        if let Some(ns) = self.ns.take() {
            for p in ctx.registry.drop_one(&ns.name).await {
                ctx.note(&format!("cleanup: {p}"));
            }
        }
    }
}
