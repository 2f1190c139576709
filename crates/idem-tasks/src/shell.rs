//! `shell` `{"program","args":[]}`: runs one allowed program — no shell in between — and returns
//! `{"exit_code","stdout","stderr"}`; a non-zero exit is a retryable `exit_status` error.
//!
//! Invariants: only programs listed in `IDEM_SHELL_ALLOW` run (exact match of the given string);
//! the program runs in its own process group, and that whole group — grandchildren included — is
//! killed with SIGKILL when the attempt ends: on cancellation, when the worker drops the future on
//! timeout, and after the program exits (so leftovers cannot keep running or hold the output open).

use std::io;
use std::process::Stdio;
use std::sync::Arc;

use idem_core::{Registry, TaskContext, TaskError};
use rustix::process::{kill_process_group, Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::{lossy_prefix, OUTPUT_LIMIT};

/// How much of stderr a failure's message quotes (its end, where the reason usually is).
const ERROR_STDERR_CHARS: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellArgs {
    program: String,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ShellResult {
    exit_code: i32,
    /// At most 64 KiB of each stream, decoded as UTF-8 with replacement.
    stdout: String,
    stderr: String,
}

pub(crate) fn register(registry: &mut Registry, allow: Vec<String>) {
    let allow: Arc<[String]> = allow.into();
    registry.register("shell", move |ctx: TaskContext, args: ShellArgs| {
        let allow = Arc::clone(&allow);
        async move { run(&allow, ctx, args).await }
    });
}

async fn run(
    allow: &[String],
    ctx: TaskContext,
    args: ShellArgs,
) -> Result<ShellResult, TaskError> {
    if !allow.contains(&args.program) {
        return Err(TaskError::give_up(
            "not_allowed",
            format!(
                "program {:?} is not allowed; add it to IDEM_SHELL_ALLOW \
                 (comma-separated program names or absolute paths) to let the shell task run it",
                args.program
            ),
        ));
    }
    let mut child = Command::new(&args.program)
        .args(&args.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|e| spawn_error(&args.program, &e))?;
    // Armed straight after spawn: from here every way out of this function — return, `?`, or the
    // future being dropped — kills the group.
    let mut group = ProcessGroup::new(child.id().expect("a just-spawned child has a pid"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");

    let finished = async {
        let exited = async {
            let status = child.wait().await;
            // Leftover background processes would otherwise outlive the attempt and keep the
            // pipes open, so the reads below would wait for them.
            group.kill();
            status
        };
        tokio::join!(exited, drain(stdout), drain(stderr))
    };
    let (status, stdout, stderr) = tokio::select! {
        out = finished => out,
        () = ctx.cancel.cancelled() => {
            return Err(TaskError::retry("cancelled", format!("{} was cancelled", args.program)));
        }
    };
    let status = status
        .map_err(|e| TaskError::retry("error", format!("waiting for {}: {e}", args.program)))?;
    let stdout = lossy_prefix(&stdout.unwrap_or_default(), OUTPUT_LIMIT);
    let stderr = lossy_prefix(&stderr.unwrap_or_default(), OUTPUT_LIMIT);
    match status.code() {
        Some(0) => Ok(ShellResult {
            exit_code: 0,
            stdout,
            stderr,
        }),
        code => {
            let how = match code {
                Some(code) => format!("exited with status {code}"),
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    format!(
                        "was killed by signal {}",
                        status.signal().unwrap_or_default()
                    )
                }
            };
            Err(TaskError::retry(
                "exit_status",
                format!(
                    "{} {how}: {}",
                    args.program,
                    tail(&stderr, ERROR_STDERR_CHARS)
                ),
            ))
        }
    }
}

fn spawn_error(program: &str, err: &io::Error) -> TaskError {
    let message = format!("could not start {program}: {err}");
    match err.kind() {
        // A missing or non-executable program stays that way: retrying cannot help.
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => {
            TaskError::give_up("spawn", message)
        }
        _ => TaskError::retry("spawn", message),
    }
}

/// Reads a stream to its end, keeping the first [`OUTPUT_LIMIT`] bytes. It keeps reading past the
/// limit so the program never blocks on a full pipe.
async fn drain(mut stream: impl AsyncRead + Unpin) -> io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = OUTPUT_LIMIT - kept.len();
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// The last `max` characters of `text`, trimmed.
fn tail(text: &str, max: usize) -> &str {
    let start = text
        .char_indices()
        .rev()
        .nth(max.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    text[start..].trim()
}

/// Kills a process group with SIGKILL once: when asked, or when dropped.
struct ProcessGroup {
    /// `None` once killed.
    pgid: Option<u32>,
}

impl ProcessGroup {
    fn new(pgid: u32) -> Self {
        Self { pgid: Some(pgid) }
    }

    /// Sends SIGKILL to the whole group: one `kill(2)` system call, which never blocks, so it is
    /// safe in async code and in `Drop` (an earlier version ran the `kill` program and waited for
    /// it there).
    fn kill(&mut self) {
        let Some(pgid) = self.pgid.take() else {
            return;
        };
        let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
            return;
        };
        match kill_process_group(pid, Signal::KILL) {
            // ESRCH: the group is already gone, which is the common case after the program exits.
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => {
                tracing::warn!(pgid, error = %e, "could not kill a shell task's process group")
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests;
