//! The `shell` task, called through the registry, with real processes.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::test_support::{assert_gives_up, assert_retries, call, ctx, registry as builtins};
use crate::BuiltinConfig;

fn allowing(programs: &[&str]) -> BuiltinConfig {
    BuiltinConfig {
        shell_allow: programs.iter().map(|p| (*p).to_owned()).collect(),
        ..BuiltinConfig::default()
    }
}

/// Polls `check` every 10 ms until it yields a value, failing the test after `within`.
async fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The live (not zombie) processes in process group `pgid`, from /proc.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // exited while we looked
        };
        // `pid (comm) state ppid pgrp …`; comm may contain spaces and parentheses.
        let after_comm = &stat[stat.rfind(')').unwrap() + 1..];
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        if fields[0] != "Z" && fields[2].parse::<u32>() == Ok(pgid) {
            members.push(pid);
        }
    }
    members
}

/// A `sh -c` script that first writes its pid — the process group id — to `pidfile`.
fn script_reporting_pgid(pidfile: &Path, rest: &str) -> serde_json::Value {
    let script = format!("echo $$ > '{}'; {rest}", pidfile.display());
    json!({"program": "sh", "args": ["-c", script]})
}

async fn reported_pgid(pidfile: &Path) -> u32 {
    eventually(
        "the script to report its pid",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(pidfile).ok()?;
            text.strip_suffix('\n')?.parse().ok()
        },
    )
    .await
}

#[tokio::test]
async fn shell_refuses_programs_not_in_the_allow_list() {
    let registry = builtins(allowing(&["/bin/echo"]));
    // Exact match: "echo" is not "/bin/echo".
    for program in ["echo", "sh", "/bin/sh"] {
        let err = call(&registry, "shell", ctx(1), json!({"program": program}))
            .await
            .unwrap_err();
        assert_gives_up(&err, "not_allowed");
        assert!(err.info().message.contains("IDEM_SHELL_ALLOW"), "{err:?}");
    }
}

#[tokio::test]
async fn shell_refuses_everything_when_nothing_is_allowed() {
    let registry = builtins(BuiltinConfig::default());
    let err = call(
        &registry,
        "shell",
        ctx(1),
        json!({"program": "echo", "args": ["hi"]}),
    )
    .await
    .unwrap_err();
    assert_gives_up(&err, "not_allowed");
}

#[tokio::test]
async fn shell_runs_an_allowed_program_and_captures_its_output() {
    let registry = builtins(allowing(&["echo"]));
    let out = call(
        &registry,
        "shell",
        ctx(1),
        json!({"program": "echo", "args": ["hi"]}),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"exit_code": 0, "stdout": "hi\n", "stderr": ""}));
}

#[tokio::test]
async fn shell_passes_arguments_without_a_shell() {
    let registry = builtins(allowing(&["echo"]));
    let out = call(
        &registry,
        "shell",
        ctx(1),
        json!({"program": "echo", "args": ["$HOME", "; rm -rf /", "a b"]}),
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"], "$HOME ; rm -rf / a b\n");
}

#[tokio::test]
async fn shell_retries_a_non_zero_exit_quoting_stderr() {
    let registry = builtins(allowing(&["false", "sh"]));
    let err = call(&registry, "shell", ctx(1), json!({"program": "false"}))
        .await
        .unwrap_err();
    assert_retries(&err, "exit_status");

    let args = json!({"program": "sh", "args": ["-c", "echo 'disk is full' >&2; exit 3"]});
    let err = call(&registry, "shell", ctx(1), args).await.unwrap_err();
    assert_retries(&err, "exit_status");
    assert!(
        err.info().message.contains("exited with status 3"),
        "{err:?}"
    );
    assert!(err.info().message.ends_with("disk is full"), "{err:?}");
}

#[tokio::test]
async fn shell_gives_up_when_the_program_does_not_exist() {
    let registry = builtins(allowing(&["/nonexistent/idem-test-program"]));
    let args = json!({"program": "/nonexistent/idem-test-program"});
    let err = call(&registry, "shell", ctx(1), args).await.unwrap_err();
    assert_gives_up(&err, "spawn");
}

#[tokio::test]
async fn shell_keeps_the_first_64_kib_of_output_without_blocking_the_program() {
    let registry = builtins(allowing(&["sh"]));
    let script = "head -c 1000000 /dev/zero | tr '\\0' x; echo done >&2";
    let out = call(
        &registry,
        "shell",
        ctx(1),
        json!({"program": "sh", "args": ["-c", script]}),
    )
    .await
    .unwrap();
    assert_eq!(out["stdout"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(out["stderr"], "done\n");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn shell_kills_the_whole_process_group_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let registry = builtins(allowing(&["sh"]));
    let ctx = ctx(1);
    let cancel = ctx.cancel.clone();
    let args = script_reporting_pgid(&pidfile, "sleep 30 & sleep 30");
    let running = tokio::spawn(async move { call(&registry, "shell", ctx, args).await });

    let pgid = reported_pgid(&pidfile).await;
    // The shell and its background grandchild are both running before we cancel.
    eventually(
        "the background sleep to start",
        Duration::from_secs(10),
        || (group_members(pgid).len() >= 2).then_some(()),
    )
    .await;

    cancel.cancel();
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .expect("the task returned within 2 s of cancellation")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_retries(&out.unwrap_err(), "cancelled");
    eventually(
        "the process group to be gone",
        Duration::from_secs(2),
        || group_members(pgid).is_empty().then_some(()),
    )
    .await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn shell_kills_the_whole_process_group_when_the_attempt_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let registry = builtins(allowing(&["sh"]));
    let args = script_reporting_pgid(&pidfile, "sleep 30 & sleep 30");
    // What the worker does on timeout: drop the attempt's future.
    let running = tokio::spawn(async move { call(&registry, "shell", ctx(1), args).await });

    let pgid = reported_pgid(&pidfile).await;
    eventually(
        "the background sleep to start",
        Duration::from_secs(10),
        || (group_members(pgid).len() >= 2).then_some(()),
    )
    .await;

    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    eventually(
        "the process group to be gone",
        Duration::from_secs(2),
        || group_members(pgid).is_empty().then_some(()),
    )
    .await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn shell_returns_when_the_program_exits_even_if_it_left_children_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let registry = builtins(allowing(&["sh"]));
    let args = script_reporting_pgid(&pidfile, "sleep 30 & echo done");
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        call(&registry, "shell", ctx(1), args),
    )
    .await
    .expect("the leftover sleep did not hold the task open")
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out["stdout"], "done\n");
    let pgid = reported_pgid(&pidfile).await;
    eventually(
        "the leftover sleep to be killed",
        Duration::from_secs(2),
        || group_members(pgid).is_empty().then_some(()),
    )
    .await;
}

#[test]
fn tail_keeps_the_last_characters() {
    assert_eq!(super::tail("abcdef", 3), "def");
    assert_eq!(super::tail("ab", 3), "ab");
    assert_eq!(super::tail("  x\n", 10), "x");
    assert_eq!(super::tail("ééé", 2), "éé");
}
