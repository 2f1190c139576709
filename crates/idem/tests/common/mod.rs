//! Helpers for end-to-end tests: an in-process app on port 0 with a fresh SQLite file, the real
//! binary as a child process, and polling with a deadline (never a bare sleep to wait for a state).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use idem::app::{self, Roles, Running};
use idem::config::Cli;
use serde_json::Value;

/// An app started in this process.
pub struct TestApp {
    pub running: Running,
    pub base: String,
    pub client: reqwest::Client,
    pub db: PathBuf,
}

pub fn db_path() -> PathBuf {
    tempfile::tempdir().unwrap().keep().join("idem.db")
}

/// Starts `idem serve` in-process on port 0 over `db`, with extra flags.
pub async fn spawn_app_on(db: &Path, extra: &[&str]) -> TestApp {
    let url = format!("sqlite://{}", db.display());
    let mut args = vec![
        "idem",
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        &url,
    ];
    args.extend_from_slice(extra);
    let cli = Cli::try_parse_from(args).unwrap();
    let cfg = cli.settings.resolve().unwrap();
    let backends = app::open_backends(&cfg).await.unwrap();
    let registry = app::builtin_registry(&cfg);
    let running = app::start(&cfg, Roles::of(cli.command), backends, registry)
        .await
        .unwrap();
    let base = format!("http://{}", running.addr.unwrap());
    TestApp {
        running,
        base,
        client: reqwest::Client::new(),
        db: db.to_owned(),
    }
}

pub async fn spawn_app(extra: &[&str]) -> TestApp {
    spawn_app_on(&db_path(), extra).await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn stop(self) {
        self.running.shutdown();
        self.running.wait().await;
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real `idem` binary running as a child process.
pub struct Proc {
    pub child: Child,
    pub base: String,
}

impl Proc {
    /// Starts `idem <args>` and waits until its API listens (it logs the bound address).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idem"));
        cmd.args(args)
            .env("IDEM_LOG", "info")
            .env("IDEM_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn idem");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(i) = line.find("addr=") {
                        let addr: String = line[i + 5..]
                            .chars()
                            .take_while(|c| !c.is_whitespace())
                            .collect();
                        if let Ok(a) = addr.parse::<SocketAddr>() {
                            let _ = tx.send(a);
                            sent = true;
                        }
                    }
                }
                if std::env::var("IDEM_TEST_SHOW_LOGS").is_ok() {
                    eprintln!("[idem {}] {line}", std::process::id());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("idem did not report its address");
        Proc {
            child,
            base: format!("http://{addr}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
