//! The real binary as a process: `kill -9` with accepted tasks loses none, SIGTERM drains, and bad
//! settings exit with code 2 and one line.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Proc;
use serde_json::{json, Value};

fn db_url() -> String {
    format!("sqlite://{}", common::db_path().display())
}

async fn states(base: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/tasks?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        out.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["state"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_queued_tasks_loses_none() {
    let url = db_url();
    let args = [
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        &url,
        "--worker-concurrency",
        "2",
        "--lease-seconds",
        "1",
    ];
    let mut first = Proc::spawn(&args, &[]);
    let items: Vec<Value> = (0..200).map(|i| json!({"task": "sleep", "args": {"seconds": 0.05}, "idempotency_key": format!("k{i}")})).collect();
    let r = reqwest::Client::new()
        .post(first.url("/api/v1/tasks/submit/batch"))
        .json(&json!({"items": items}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // Let some run, then kill without warning.
    common::eventually("some progress", Duration::from_secs(20), || async {
        states(&first.base)
            .await
            .iter()
            .any(|s| s == "succeeded")
            .then_some(())
    })
    .await;
    first.signal(9);
    first.wait_exit(Duration::from_secs(10)).expect("killed");

    let second = Proc::spawn(&args, &[]);
    let finals = common::eventually("every task to finish", Duration::from_secs(60), || async {
        let s = states(&second.base).await;
        s.iter().all(|s| s == "succeeded").then_some(s)
    })
    .await;
    assert_eq!(
        finals.len(),
        200,
        "every accepted task is still there and succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_running_tasks_back_and_exits_within_the_grace() {
    let url = db_url();
    let args = [
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        &url,
        "--shutdown-grace-seconds",
        "0.5",
    ];
    let mut p = Proc::spawn(&args, &[]);
    let client = reqwest::Client::new();
    let task: Value = client
        .post(p.url("/api/v1/tasks/submit"))
        .json(&json!({"task": "sleep", "args": {"seconds": 60}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = task["id"].as_str().unwrap().to_owned();
    common::eventually("running", Duration::from_secs(10), || async {
        let t: Value = reqwest::get(p.url(&format!("/api/v1/tasks/{id}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (t["state"] == "running").then_some(())
    })
    .await;
    p.signal(15);
    let status = p
        .wait_exit(Duration::from_secs(10))
        .expect("exits within the grace period");
    assert!(status.success(), "{status:?}");

    // Started again, the handed-back task is queued and runs (a short sleep would finish; this one is
    // cancelled once it runs again, which proves it was returned to the queue rather than lost).
    let p2 = Proc::spawn(&args, &[]);
    common::eventually("rerun", Duration::from_secs(10), || async {
        let t: Value = reqwest::get(p2.url(&format!("/api/v1/tasks/{id}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (t["state"] == "running" && t["attempts"] == 2).then_some(())
    })
    .await;
}

#[test]
fn bad_settings_exit_2_with_one_line() {
    for (args, setting) in [
        (
            vec!["serve", "--database-url", "mysql://nope"],
            "IDEM_DATABASE_URL",
        ),
        (vec!["serve", "--bind", "not-an-address"], "--bind"),
        (
            vec!["serve", "--worker-concurrency", "0"],
            "--worker-concurrency",
        ),
        (
            vec![
                "serve",
                "--database-url",
                "sqlite:///nonexistent-dir/x/idem.db",
            ],
            "IDEM_DATABASE_URL",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_idem"))
            .args(&args)
            .env("IDEM_LOG", "error")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(setting), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn an_operations_listener_that_cannot_listen_exits_2_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let url = db_url();
    for ops_bind in ["nowhere", in_use.as_str()] {
        let out = Command::new(env!("CARGO_BIN_EXE_idem"))
            .args(["worker", "--database-url", &url, "--ops-bind", ops_bind])
            .env("IDEM_LOG", "error")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{ops_bind}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{ops_bind}: {stderr}");
        assert!(stderr.contains("IDEM_OPS_BIND"), "{ops_bind}: {stderr}");
    }
}
