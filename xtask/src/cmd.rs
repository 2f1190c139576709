//! External commands and small waiting helpers: every command runs with a deadline, every wait polls
//! with a deadline, and signals go to one process id at a time.
//!
//! Invariant: nothing here blocks longer than the limit it is given, and nothing signals a process
//! by name.

use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Runs `program args` to its end, at most `limit`; its stdout, or an error with its stderr.
pub async fn run(program: &str, args: &[&str], limit: Duration) -> anyhow::Result<String> {
    run_env(program, args, &[], limit).await
}

/// As [`run`], with extra environment variables.
pub async fn run_env(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("{program} {args:?}: no end within {limit:?}"))?
        .with_context(|| format!("{program}: cannot run it"))?;
    if !out.status.success() {
        bail!(
            "{program} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends `signal` (a name such as `KILL`, `STOP`, `CONT`, `TERM`) to one process id.
pub async fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    run(
        "kill",
        &[&format!("-{signal}"), &pid.to_string()],
        Duration::from_secs(5),
    )
    .await
    .map(|_| ())
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` (within 1 s).
pub async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// A TCP port on loopback that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Polls `f` every `every` until it returns `Some`, for at most `limit`.
pub async fn poll<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// The ids of the processes whose parent is `pid` (from /proc), for stopping what a private
/// service forked without naming anything.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z") | Some("X")
        ),
        Err(_) => false,
    }
}
