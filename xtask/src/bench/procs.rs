//! The processes a benchmark starts (idem roles, a Celery worker): each in its own process group,
//! its output in a log file of the run directory, and gone again when its handle is dropped — on
//! success, on an error and when the runner is interrupted — by a SIGKILL to its whole group. Also
//! the CPU time and memory of a process, read from /proc.
//!
//! Invariants: a process is signalled only through its own group id (its pid, as the group leader),
//! or by the pid of a member found in /proc with that group id — never by name; every idem process
//! runs under `setpriv --pdeathsig KILL`, so it dies with the runner even if the runner is killed
//! with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// One started process (the leader of its own process group).
pub struct Proc {
    pub label: String,
    pub pid: u32,
    pub log: PathBuf,
    child: Child,
}

/// How to start one process.
pub struct Launch<'a> {
    pub label: &'a str,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<&'a Path>,
    /// Wrap in `setpriv --pdeathsig KILL` (a Python worker forks; its children are killed through
    /// the group instead).
    pub pdeathsig: bool,
}

impl Proc {
    /// Starts `launch` with stdout and stderr appended to `log`.
    pub fn spawn(launch: Launch<'_>, log: &Path) -> anyhow::Result<Proc> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = if launch.pdeathsig {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(launch.program);
            c
        } else {
            Command::new(launch.program)
        };
        cmd.args(&launch.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = launch.cwd {
            cmd.current_dir(dir);
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", launch.label, launch.program.display()))?;
        let pid = child.id().context("a just-started child has a pid")?;
        Ok(Proc {
            label: launch.label.to_owned(),
            pid,
            log: log.to_owned(),
            child,
        })
    }

    /// Whether the process has exited (reaps it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)) | Err(_))
    }

    /// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL to whatever of the
    /// group is left.
    pub async fn stop(mut self, grace: Duration) {
        if !self.exited() {
            signal_group(self.pid, "TERM");
            let _ = tokio::time::timeout(grace, self.child.wait()).await;
        }
        kill_group(self.pid, &mut self.child);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// SIGKILL to the group at once (a crash, not a shutdown); waits until the leader is gone.
    pub async fn kill(mut self) {
        kill_group(self.pid, &mut self.child);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// The last `n` lines of the process's log.
    pub fn tail(&self, n: usize) -> String {
        crate::cluster::tail(&self.log, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(self.pid, &mut self.child);
    }
}

/// SIGKILL to the group led by `pgid` (while the leader lives), then to any member left behind.
fn kill_group(pgid: u32, child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        signal_group(pgid, "KILL");
    }
    for pid in group_members(pgid) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.start_kill();
}

fn signal_group(pgid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The live processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_fields(pid).is_some_and(|f| {
                f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
                    && !matches!(f.first().map(String::as_str), Some("Z") | Some("X"))
            })
        })
        .collect()
}

/// Clock ticks per second of /proc/PID/stat's times (`getconf CLK_TCK`, 100 if unknown).
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds the process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    // After the name: state(0) ppid(1) pgrp(2) session tty tpgid flags minflt cminflt majflt
    // cmajflt utime(11) stime(12).
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// (resident, peak resident) memory in MiB, from /proc/PID/status.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds of several processes at one instant, to take a difference of later.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: std::time::Instant,
    seconds: Vec<(String, f64)>,
}

impl CpuSample {
    pub fn take(procs: &[(String, u32)]) -> CpuSample {
        CpuSample {
            at: std::time::Instant::now(),
            seconds: procs
                .iter()
                .map(|(l, pid)| (l.clone(), cpu_seconds(*pid).unwrap_or(0.0)))
                .collect(),
        }
    }

    /// Percent of one core used between `self` and `later`: (total, per process label).
    pub fn percent_until(&self, later: &CpuSample) -> (f64, Vec<(String, f64)>) {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let per: Vec<(String, f64)> = self
            .seconds
            .iter()
            .zip(&later.seconds)
            .map(|((l, a), (_, b))| (l.clone(), (b - a).max(0.0) / wall * 100.0))
            .collect();
        (per.iter().map(|(_, p)| p).sum(), per)
    }
}
