//! The idem processes of one run: `idem api`, `idem scheduler` and `idem worker` children of the
//! runner, each with its stderr copied line by line to its own log file in the run directory and
//! scanned for the few lines the oracle counts (fence refusals, maintenance leadership).
//!
//! Invariants: every child is started under `setpriv --pdeathsig KILL`, so it dies with the runner
//! even if the runner is killed with SIGKILL; a child is signalled only by its own pid; a slot keeps
//! its role, arguments and environment across restarts (each start is a new *generation* with its
//! own log file), so "restart worker 2" means the same thing every time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::cmd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Api,
    Scheduler,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Scheduler => "scheduler",
            Role::Worker => "worker",
        }
    }
}

/// How to start one slot.
#[derive(Debug, Clone)]
pub struct Spec {
    pub role: Role,
    /// The slot's number within its role (worker 0..3).
    pub index: usize,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Spec {
    pub fn label(&self) -> String {
        format!("{}-{}", self.role.as_str(), self.index)
    }
}

/// What the logs of every process said that the oracle counts.
#[derive(Debug, Default)]
pub struct LogEvents {
    /// `result refused: attempt superseded` lines (a late result refused by its fencing token).
    pub fenced: AtomicU64,
    /// `attempt stopped` lines (a handler stopped because its lease was lost or its task cancelled).
    pub stopped: AtomicU64,
    /// Of those, the ones stopped at the worker's lease deadline (its lease could not be renewed).
    pub deadline_stops: AtomicU64,
    /// `gave up recording the outcome` lines.
    pub gave_up: AtomicU64,
    /// `broker consumer lost` lines (the broker cancelled a consumer or its channel closed).
    pub consumer_lost: AtomicU64,
    /// (when, process label, term) of each `leading maintenance` line.
    pub leaders: Mutex<Vec<(Instant, String, u64)>>,
    /// Fence refusals by process label.
    pub fenced_by: Mutex<BTreeMap<String, u64>>,
    /// (task id, when) of each `lease expired; task reaped` line, by the reaper's log timestamp.
    pub reaped: Mutex<Vec<(String, chrono::DateTime<chrono::Utc>)>>,
}

/// One started process.
pub struct Proc {
    pub spec: Spec,
    pub generation: u32,
    pub pid: u32,
    /// The API's base URL (`http://127.0.0.1:port`), for api processes.
    pub base: Option<String>,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    pub fn label(&self) -> String {
        format!("{}.{}", self.spec.label(), self.generation)
    }

    /// Whether the process has exited (reaps it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)) | Err(_))
    }
}

/// The processes of one run.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    pub procs: Vec<Proc>,
    pub events: Arc<LogEvents>,
    /// Starts of each slot, for log file names.
    generations: BTreeMap<String, u32>,
}

/// How long a process may take to say it is up.
const START_LIMIT: Duration = Duration::from_secs(45);

impl Cluster {
    pub fn new(bin: &Path, dir: &Path) -> Cluster {
        Cluster {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            procs: Vec::new(),
            events: Arc::default(),
            generations: BTreeMap::new(),
        }
    }

    /// Runs `idem migrate` once with `env`, before any role starts (roles then skip migrating).
    pub async fn migrate(&self, env: &[(String, String)]) -> anyhow::Result<()> {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cmd::run_env(
            self.bin.to_str().context("binary path is not UTF-8")?,
            &["migrate"],
            &env,
            Duration::from_secs(60),
        )
        .await
        .map(|_| ())
    }

    /// Starts a slot (first start or restart) and waits until it says it is up.
    pub async fn start(&mut self, spec: Spec) -> anyhow::Result<usize> {
        let label = spec.label();
        let generation = {
            let g = self.generations.entry(label.clone()).or_insert(0);
            *g += 1;
            *g
        };
        let log = self.dir.join(format!("{label}.{generation}.log"));
        let mut command = Command::new("setpriv");
        command
            .arg("--pdeathsig")
            .arg("KILL")
            .arg("--")
            .arg(&self.bin)
            .arg(spec.role.as_str())
            .args(&spec.args)
            .env("IDEM_LOG", "info")
            .env("IDEM_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .env("IDEM_NO_MIGRATE", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &spec.env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        let pid = child.id().context("a just-started child has a pid")?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        let (up_tx, mut up_rx) = tokio::sync::mpsc::channel::<Option<String>>(1);
        let events = self.events.clone();
        let proc_label = format!("{label}.{generation}");
        let mut file = tokio::fs::File::create(&log)
            .await
            .with_context(|| format!("creating {}", log.display()))?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut up = false;
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = file.write_all(line.as_bytes()).await;
                let _ = file.write_all(b"\n").await;
                if !up {
                    if let Some(i) = line.find("addr=") {
                        let addr: String = line[i + 5..]
                            .chars()
                            .take_while(|c| !c.is_whitespace())
                            .collect();
                        let _ = up_tx.send(Some(format!("http://{addr}"))).await;
                        up = true;
                    } else if line.contains("scheduler started") || line.contains("worker started")
                    {
                        let _ = up_tx.send(None).await;
                        up = true;
                    }
                }
                scan(&events, &proc_label, &line);
            }
            let _ = file.flush().await;
        });
        let base = match tokio::time::timeout(START_LIMIT, up_rx.recv()).await {
            Ok(Some(base)) => base,
            Ok(None) | Err(_) => {
                let _ = child.start_kill();
                let tail = tail(&log, 30);
                bail!(
                    "{label} (pid {pid}) did not come up within {START_LIMIT:?}; its log:\n{tail}"
                );
            }
        };
        self.procs.push(Proc {
            spec,
            generation,
            pid,
            base,
            log,
            child,
        });
        Ok(self.procs.len() - 1)
    }

    /// Starts several slots at once.
    pub async fn start_all(&mut self, specs: Vec<Spec>) -> anyhow::Result<()> {
        // One after the other: each takes well under a second, and starting them in parallel would
        // need the cluster shared across tasks for little gain.
        for s in specs {
            self.start(s).await?;
        }
        Ok(())
    }

    /// The live process of a slot (the latest generation).
    pub fn slot(&self, role: Role, index: usize) -> Option<usize> {
        self.procs
            .iter()
            .rposition(|p| p.spec.role == role && p.spec.index == index)
    }

    pub fn get(&self, role: Role, index: usize) -> &Proc {
        &self.procs[self.slot(role, index).expect("slot started")]
    }

    /// The API base URLs of the api slots, in slot order.
    pub fn api_bases(&self) -> Vec<String> {
        let mut apis: BTreeMap<usize, String> = BTreeMap::new();
        for p in &self.procs {
            if let (Role::Api, Some(b)) = (p.spec.role, &p.base) {
                apis.insert(p.spec.index, b.clone());
            }
        }
        apis.into_values().collect()
    }

    /// `kill -9` of a slot's live process; waits until it is gone. Returns its pid.
    pub async fn kill9(&mut self, role: Role, index: usize) -> anyhow::Result<u32> {
        let i = self.slot(role, index).context("no such slot")?;
        let p = &mut self.procs[i];
        let pid = p.pid;
        p.child.start_kill().ok();
        tokio::time::timeout(Duration::from_secs(10), p.child.wait())
            .await
            .with_context(|| format!("{} did not die within 10 s of SIGKILL", p.label()))??;
        Ok(pid)
    }

    /// Restarts a slot whose process is gone.
    pub async fn restart(&mut self, role: Role, index: usize) -> anyhow::Result<usize> {
        let i = self.slot(role, index).context("no such slot")?;
        let spec = self.procs[i].spec.clone();
        self.start(spec).await
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) to a slot's live process.
    pub async fn signal(&self, role: Role, index: usize, sig: &str) -> anyhow::Result<u32> {
        let pid = self.get(role, index).pid;
        cmd::signal(pid, sig).await?;
        Ok(pid)
    }

    /// Restarts every worker that has exited (the scenarios that crash workers on purpose keep the
    /// pool at full strength with this). Returns the labels restarted.
    pub async fn revive_workers(&mut self) -> anyhow::Result<Vec<String>> {
        let mut dead = Vec::new();
        let live: Vec<usize> = (0..self.procs.len())
            .filter(|&i| {
                let p = &self.procs[i];
                p.spec.role == Role::Worker && self.slot(p.spec.role, p.spec.index) == Some(i)
            })
            .collect();
        for i in live {
            if self.procs[i].exited() {
                dead.push((self.procs[i].spec.index, self.procs[i].label()));
            }
        }
        let mut restarted = Vec::new();
        for (index, label) in dead {
            self.restart(Role::Worker, index).await?;
            restarted.push(label);
        }
        Ok(restarted)
    }

    /// Ends every process: SIGCONT first (a stopped process cannot handle anything), then SIGKILL.
    pub async fn kill_all(&mut self) {
        for p in &mut self.procs {
            if !p.exited() {
                let _ = cmd::signal(p.pid, "CONT").await;
                let _ = p.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
            }
        }
    }

    /// How many fence refusals the logs reported so far.
    pub fn fenced(&self) -> u64 {
        self.events.fenced.load(Ordering::Relaxed)
    }
}

/// Counts the lines the oracle cares about.
fn scan(events: &LogEvents, label: &str, line: &str) {
    if line.contains("result refused: attempt superseded") {
        events.fenced.fetch_add(1, Ordering::Relaxed);
        *events
            .fenced_by
            .lock()
            .unwrap()
            .entry(label.to_owned())
            .or_default() += 1;
    } else if line.contains("attempt stopped") {
        events.stopped.fetch_add(1, Ordering::Relaxed);
        if line.contains("could not be renewed") {
            events.deadline_stops.fetch_add(1, Ordering::Relaxed);
        }
    } else if line.contains("gave up recording the outcome") {
        events.gave_up.fetch_add(1, Ordering::Relaxed);
    } else if line.contains("broker consumer lost") {
        events.consumer_lost.fetch_add(1, Ordering::Relaxed);
    } else if line.contains("task reaped") {
        let at = line
            .split_whitespace()
            .next()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let id = line
            .split("task_id=")
            .nth(1)
            .and_then(|t| t.split_whitespace().next());
        if let (Some(at), Some(id)) = (at, id) {
            events
                .reaped
                .lock()
                .unwrap()
                .push((id.to_owned(), at.with_timezone(&chrono::Utc)));
        }
    } else if line.contains("leading maintenance") {
        let term = line
            .split("term=")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        events
            .leaders
            .lock()
            .unwrap()
            .push((Instant::now(), label.to_owned(), term));
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
