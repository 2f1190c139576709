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
    spawn_app_with(db, extra, |_| {}).await
}

/// Starts an app whose registry has the built-ins plus what `register` adds (the library path).
pub async fn spawn_app_with(
    db: &Path,
    extra: &[&str],
    register: impl FnOnce(&mut idem_core::Registry),
) -> TestApp {
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
    let mut registry = app::builtin_registry(&cfg);
    register(&mut registry);
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

/// The final result of task `id`, long-polling `GET /api/v1/tasks/{id}/result` for up to 30 s.
pub async fn wait_result(app: &TestApp, id: &str) -> Value {
    eventually("a final result", Duration::from_secs(30), || async {
        let (status, body) = app
            .get(&format!("/api/v1/tasks/{id}/result?wait_seconds=5"))
            .await;
        (status == 200).then_some(body)
    })
    .await
}

/// The real `idem` binary running as a child process.
pub struct Proc {
    pub child: Child,
    pub base: String,
}

/// `idem <args>` with plain-text logs on a pipe, so the helpers can read them.
fn idem_command(args: &[&str], env: &[(&str, &str)]) -> Command {
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
    cmd
}

impl Proc {
    /// Starts `idem <args>` and waits until its API listens (it logs the bound address).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = idem_command(args, env).spawn().expect("spawn idem");
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

// -------------------------------------------------------------------------------------------------
// Multi-process helpers (distributed.rs, restarts.rs): roles without the API, kept child logs, one
// PostgreSQL database per test, service checks, an HTTP receiver that records every delivery, API
// listing helpers, and the exactly-once verification both suites share.
// -------------------------------------------------------------------------------------------------

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

/// How many of a child's last log lines are kept for diagnostics.
const KEPT_LOG_LINES: usize = 300;

/// A process to start: its arguments and its environment.
pub type RoleSpec = (Vec<String>, Vec<(String, String)>);

/// How a submission ended: the answer's status and task and the failed tries before it, or why it
/// was given up.
pub type SubmitOutcome = Result<(u16, Value, Vec<String>), String>;

/// Child pid -> (label, last log lines).
type LogBook = Mutex<HashMap<u32, (String, VecDeque<String>)>>;

fn log_book() -> &'static LogBook {
    static BOOK: OnceLock<LogBook> = OnceLock::new();
    BOOK.get_or_init(Default::default)
}

fn logs_of(pid: u32) -> Vec<String> {
    log_book()
        .lock()
        .unwrap()
        .get(&pid)
        .map(|(_, lines)| lines.iter().cloned().collect())
        .unwrap_or_default()
}

impl Proc {
    /// Starts `idem <args>` for any role and waits until it says it is up: the API's address
    /// (`addr=`, which sets `base`), "scheduler started" or "worker started" (roles without the API
    /// leave `base` empty). Its last log lines are kept for [`Proc::logs`]; if it exits or stays
    /// silent for 30 s, this panics with its log.
    pub fn spawn_role(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let label = args.first().copied().unwrap_or("idem").to_owned();
        let mut child = idem_command(args, env).spawn().expect("spawn idem");
        let pid = child.id();
        log_book()
            .lock()
            .unwrap()
            .insert(pid, (label.clone(), VecDeque::new()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Option<SocketAddr>>();
        std::thread::spawn(move || {
            let show = std::env::var("IDEM_TEST_SHOW_LOGS").is_ok();
            let mut up = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !up {
                    // `addr=1.2.3.4:5` in text logs, `"addr":"1.2.3.4:5"` in JSON logs.
                    let at = line
                        .find("addr=")
                        .map(|i| i + 5)
                        .or_else(|| line.find("\"addr\":\"").map(|i| i + 8));
                    if let Some(i) = at {
                        let addr: String = line[i..]
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect();
                        if let Ok(a) = addr.parse::<SocketAddr>() {
                            let _ = tx.send(Some(a));
                            up = true;
                        }
                    } else if line.contains("scheduler started") || line.contains("worker started")
                    {
                        let _ = tx.send(None);
                        up = true;
                    }
                }
                if show {
                    eprintln!("[idem {label} {pid}] {line}");
                }
                if let Some((_, lines)) = log_book().lock().unwrap().get_mut(&pid) {
                    if lines.len() == KEPT_LOG_LINES {
                        lines.pop_front();
                    }
                    lines.push_back(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Proc {
                child,
                base: addr.map(|a| format!("http://{a}")).unwrap_or_default(),
            },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "idem {args:?} did not come up ({e}); its log:\n{}",
                    logs_of(pid).join("\n")
                );
            }
        }
    }

    /// Starts several processes at once (each as [`Proc::spawn_role`]), in the order given.
    pub fn spawn_roles(specs: &[RoleSpec]) -> Vec<Proc> {
        std::thread::scope(|s| {
            let handles: Vec<_> = specs
                .iter()
                .map(|(args, env)| {
                    s.spawn(move || {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        let env: Vec<(&str, &str)> =
                            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        Proc::spawn_role(&args, &env)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last log lines of a process started with [`Proc::spawn_role`].
    pub fn logs(&self) -> Vec<String> {
        logs_of(self.child.id())
    }

    /// Prints the last `n` log lines of a process started with [`Proc::spawn_role`].
    pub fn print_logs(&self, what: &str, n: usize) {
        let lines = self.logs();
        let from = lines.len().saturating_sub(n);
        eprintln!(
            "----- {what} (pid {}): last {} log lines -----",
            self.pid(),
            lines.len() - from
        );
        for l in &lines[from..] {
            eprintln!("  {l}");
        }
    }
}

/// The test services' URLs (`IDEM_TEST_*`, defaulting to the local services).
pub fn pg_url() -> String {
    idem_testkit::services::service_url(
        "IDEM_TEST_PG_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

pub fn amqp_url() -> String {
    idem_testkit::services::service_url(
        "IDEM_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

pub fn redis_url() -> String {
    idem_testkit::services::service_url("IDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
}

/// Host and port of a service URL (`default_port` when it names none).
pub fn host_port(url: &str, default_port: u16) -> Result<(String, u16), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = u
        .host_str()
        .ok_or_else(|| format!("{url}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, u.port().unwrap_or(default_port)))
}

/// Whether RabbitMQ answers at `url`: a real AMQP handshake, within 5 s.
pub async fn amqp_reachable(url: &str) -> Result<(), String> {
    let connect = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "bye".into()).await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no AMQP handshake within 5 s".to_owned()),
    }
}

/// Whether Redis answers `PING` at `url`, within 2 s.
pub async fn redis_ping(url: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, port) = host_port(url, 6379)?;
    let ping = async {
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        s.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        if reply.starts_with("+PONG") {
            Ok(())
        } else {
            Err(format!("{host}:{port} answered {reply:?} to PING"))
        }
    };
    tokio::time::timeout(Duration::from_secs(2), ping)
        .await
        .unwrap_or_else(|_| Err(format!("{host}:{port}: no answer to PING within 2 s")))
}

/// A fresh PostgreSQL database for one test, created over a connection to the admin URL's database.
pub struct TestDb {
    /// The new database's URL, for `IDEM_DATABASE_URL`.
    pub url: String,
    pub name: String,
    admin: String,
}

impl TestDb {
    pub async fn create(admin_url: &str) -> Result<TestDb, String> {
        use sqlx::Connection;
        let connect = sqlx::PgConnection::connect(admin_url);
        let mut conn = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| format!("{admin_url}: no answer within 5 s"))?
            .map_err(|e| e.to_string())?;
        let name = idem_testkit::services::unique_name("idem_t");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        let _ = conn.close().await;
        let mut url = reqwest::Url::parse(admin_url).map_err(|e| e.to_string())?;
        url.set_path(&format!("/{name}"));
        Ok(TestDb {
            url: url.to_string(),
            name,
            admin: admin_url.to_owned(),
        })
    }

    /// Drops the database (best effort; a failing test keeps it for inspection by not calling this).
    pub async fn drop_db(&self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin).await {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
            if let Err(e) = sqlx::query(&sql).execute(&mut conn).await {
                eprintln!("could not drop {}: {e}", self.name);
            }
            let _ = conn.close().await;
        }
    }
}

/// Deletes an AMQP queue (best effort), so test queues do not pile up in the broker.
pub async fn delete_amqp_queue(url: &str, queue: &str) {
    let Ok(Ok(conn)) = tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
    )
    .await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub key: String,
    pub task_id: String,
    pub attempt: i64,
    pub body: Value,
}

type Hits = Arc<Mutex<Vec<Hit>>>;

/// An HTTP receiver in the test process (127.0.0.1, port 0) that records every `POST /hook` with
/// its `Idempotency-Key`, `Idem-Task-Id` and `Idem-Attempt` headers and JSON body, and answers 200.
pub struct Receiver {
    /// The hook's URL, for the `http` task's `url`.
    pub hook: String,
    hits: Hits,
    server: tokio::task::JoinHandle<()>,
}

async fn record_hit(
    axum::extract::State(hits): axum::extract::State<Hits>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let hit = Hit {
        key: header("idempotency-key"),
        task_id: header("idem-task-id"),
        attempt: header("idem-attempt").parse().unwrap_or(-1),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    hits.lock().unwrap().push(hit);
    axum::http::StatusCode::OK
}

impl Receiver {
    pub async fn start() -> Receiver {
        let hits: Hits = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record_hit))
            .with_state(hits.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            hook: format!("http://{addr}/hook"),
            hits,
            server,
        }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A client for the test's API calls, with a per-request timeout.
pub fn api_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// Whether a task state is final.
pub fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled" | "expired")
}

/// `GET url` as JSON.
pub async fn get_json(client: &reqwest::Client, url: &str) -> Result<(u16, Value), String> {
    let r = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// `POST url` with a JSON body.
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<(u16, Value), String> {
    let r = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// Every task in the store, through the paginated list.
pub async fn all_tasks(client: &reqwest::Client, base: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/tasks?limit=1000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get_json(client, &url).await?;
        if status != 200 {
            return Err(format!("GET {url}: {status} {page}"));
        }
        out.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

/// Polls until every task is final and returns them; after `limit`, an error naming the unfinished.
pub async fn wait_all_final(
    client: &reqwest::Client,
    base: &str,
    limit: Duration,
) -> Result<Vec<Value>, String> {
    let deadline = Instant::now() + limit;
    loop {
        let tasks = all_tasks(client, base).await;
        if let Ok(tasks) = &tasks {
            if tasks
                .iter()
                .all(|t| is_final(t["state"].as_str().unwrap_or("")))
            {
                return Ok(tasks.clone());
            }
        }
        if Instant::now() > deadline {
            let detail = match tasks {
                Ok(tasks) => {
                    let open: Vec<String> = tasks
                        .iter()
                        .filter(|t| !is_final(t["state"].as_str().unwrap_or("")))
                        .map(|t| {
                            format!(
                                "{} key={} state={} attempts={} created_at={} started_at={} error={}",
                                t["id"],
                                t["idempotency_key"],
                                t["state"],
                                t["attempts"],
                                t["created_at"],
                                t["started_at"],
                                t["error"]
                            )
                        })
                        .collect();
                    format!(
                        "{} unfinished of {}:\n  {}",
                        open.len(),
                        tasks.len(),
                        open.join("\n  ")
                    )
                }
                Err(e) => e,
            };
            return Err(format!(
                "timed out waiting for every task to be final: {detail}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A job's fire history (newest first).
/// Reads every job's runs and checks the whole run with [`verify`]; on any problem (these or the
/// caller's) prints each process's last `log_lines` log lines and fails, naming the kept database.
#[allow(clippy::too_many_arguments)]
pub async fn verify_or_fail(
    client: &reqwest::Client,
    base: &str,
    db: &str,
    expected: &Expected,
    tasks: &[Value],
    receiver: &Receiver,
    mut problems: Vec<String>,
    procs: &[(&str, &Proc)],
    log_lines: usize,
) -> Stats {
    let mut runs = BTreeMap::new();
    for id in expected.jobs.keys() {
        runs.insert(id.clone(), job_runs(client, base, id).await);
    }
    let verdict = verify(expected, tasks, &runs, &receiver.hits());
    if let Err(p) = &verdict {
        problems.extend(p.iter().cloned());
    }
    if !problems.is_empty() {
        for (name, p) in procs {
            p.print_logs(name, log_lines);
        }
        panic!(
            "{} problems (database {db} kept):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    verdict.unwrap()
}

pub async fn job_runs(client: &reqwest::Client, base: &str, job: &str) -> Vec<Value> {
    let url = format!("{base}/api/v1/jobs/{job}/runs?limit=1000");
    let (status, body) = get_json(client, &url).await.unwrap();
    assert_eq!(status, 200, "GET {url}: {body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

/// The idempotency key of a fire: `job:{job_id}:{scheduled_at, RFC 3339, ms, UTC}`.
pub fn fire_key(job: &str, scheduled_at: &str) -> String {
    let at = chrono::DateTime::parse_from_rfc3339(scheduled_at)
        .unwrap_or_else(|e| panic!("scheduled_at {scheduled_at:?}: {e}"))
        .with_timezone(&chrono::Utc);
    format!("job:{job}:{}", at.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

/// Submits `body` (which carries its `idempotency_key`) until the API accepts it — 202, or 200 for a
/// replay — retrying connection errors and 5xx with the same key as a client would, for up to
/// `limit`. Returns the answer's status and task, and the failed tries before it.
pub async fn submit_until_accepted(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    limit: Duration,
) -> SubmitOutcome {
    let url = format!("{base}/api/v1/tasks/submit");
    let deadline = Instant::now() + limit;
    let mut failures = Vec::new();
    let mut delay = Duration::from_millis(100);
    loop {
        match post_json(client, &url, body).await {
            Ok((status @ (200 | 202), task)) => return Ok((status, task, failures)),
            Ok((status, problem)) if status >= 500 => failures.push(format!("{status} {problem}")),
            Ok((status, problem)) => {
                return Err(format!(
                    "refused with {status}: {problem} (after {failures:?})"
                ))
            }
            Err(e) => failures.push(e),
        }
        if Instant::now() > deadline {
            return Err(format!("not accepted within {limit:?}: {failures:?}"));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// What a run is expected to have produced.
pub struct Expected {
    /// Job id -> the body its `http` task sends.
    pub jobs: BTreeMap<String, Value>,
    /// Submission key -> (the body its `http` task sends, the task ids the API answered with).
    pub keys: BTreeMap<String, (Value, BTreeSet<String>)>,
    /// Every job must have a fired run scheduled after this.
    pub fires_after: chrono::DateTime<chrono::Utc>,
}

/// What a run did, for the report.
#[derive(Debug, Default)]
pub struct Stats {
    pub tasks: usize,
    pub fires: usize,
    pub missed: usize,
    pub skipped_overlap: usize,
    pub deliveries: usize,
    pub distinct_keys: usize,
    /// Deliveries beyond the first per key (at-least-once; each from a later attempt).
    pub raw_duplicates: usize,
    pub retried_tasks: usize,
}

/// Checks exactly-once over the final store and the receiver: every fire has one task under its fire
/// key, every submission key one task, every task succeeded, and every key reached the receiver,
/// more than once only for tasks that ran more than one attempt (each attempt at most once, the
/// succeeding one among them). Returns the statistics, or every problem found.
pub fn verify(
    expected: &Expected,
    tasks: &[Value],
    runs: &BTreeMap<String, Vec<Value>>,
    hits: &[Hit],
) -> Result<Stats, Vec<String>> {
    let mut problems = Vec::new();
    let mut stats = Stats {
        tasks: tasks.len(),
        deliveries: hits.len(),
        ..Stats::default()
    };
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();

    // Tasks by id and by key.
    let mut by_id: HashMap<String, &Value> = HashMap::new();
    let mut by_key: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for t in tasks {
        if by_id.insert(s(&t["id"]), t).is_some() {
            problems.push(format!("task {} listed twice", t["id"]));
        }
        match t["idempotency_key"].as_str() {
            Some(k) => by_key.entry(k.to_owned()).or_default().push(t),
            None => problems.push(format!("task {} has no idempotency key", t["id"])),
        }
    }
    for (k, ts) in &by_key {
        if ts.len() > 1 {
            let ids: Vec<String> = ts.iter().map(|t| s(&t["id"])).collect();
            problems.push(format!("key {k} has {} tasks: {ids:?}", ts.len()));
        }
    }

    // Every task succeeded.
    for t in tasks {
        if t["state"] != "succeeded" {
            problems.push(format!(
                "task {} ({}) is {} after {} attempts: {}",
                t["id"], t["idempotency_key"], t["state"], t["attempts"], t["error"]
            ));
        }
        if t["attempts"].as_i64().unwrap_or(0) > 1 {
            stats.retried_tasks += 1;
        }
    }

    // (a) Every fire has exactly one task, under its fire key; no slot twice; no task without a fire.
    let mut expected_bodies: BTreeMap<String, Value> = BTreeMap::new();
    for (job, body) in &expected.jobs {
        let Some(job_runs) = runs.get(job) else {
            problems.push(format!("job {job}: no runs listed"));
            continue;
        };
        let mut slots = BTreeSet::new();
        let mut fired_tasks = BTreeSet::new();
        let mut last_fire: Option<chrono::DateTime<chrono::Utc>> = None;
        for r in job_runs {
            let at = s(&r["scheduled_at"]);
            if !slots.insert(at.clone()) {
                problems.push(format!("job {job}: slot {at} appears twice in its runs"));
            }
            match r["outcome"].as_str() {
                Some("fired") => {}
                Some("missed") => {
                    stats.missed += 1;
                    continue;
                }
                Some("skipped_overlap") => {
                    stats.skipped_overlap += 1;
                    continue;
                }
                other => {
                    problems.push(format!("job {job}: run {at} has outcome {other:?}"));
                    continue;
                }
            }
            stats.fires += 1;
            let when = chrono::DateTime::parse_from_rfc3339(&at)
                .unwrap()
                .with_timezone(&chrono::Utc);
            last_fire = last_fire.max(Some(when));
            let key = fire_key(job, &at);
            let Some(task_id) = r["task_id"].as_str() else {
                problems.push(format!("job {job}: fired run {at} has no task"));
                continue;
            };
            fired_tasks.insert(task_id.to_owned());
            match by_id.get(task_id) {
                None => problems.push(format!("job {job}: fire {at}'s task {task_id} is missing")),
                Some(t) => {
                    if t["idempotency_key"] != key.as_str() {
                        problems.push(format!(
                            "job {job}: fire {at}'s task {task_id} has key {}, not {key}",
                            t["idempotency_key"]
                        ));
                    }
                    if t["job_id"] != job.as_str() {
                        problems.push(format!(
                            "task {task_id} of {job} has job_id {}",
                            t["job_id"]
                        ));
                    }
                }
            }
            expected_bodies.insert(key, body.clone());
        }
        let of_job: BTreeSet<String> = tasks
            .iter()
            .filter(|t| t["job_id"] == job.as_str())
            .map(|t| s(&t["id"]))
            .collect();
        let stray: Vec<_> = of_job.difference(&fired_tasks).collect();
        if !stray.is_empty() {
            problems.push(format!("job {job}: tasks without a fired run: {stray:?}"));
        }
        let fired_after = matches!(last_fire, Some(l) if l > expected.fires_after);
        if !fired_after {
            problems.push(format!(
                "job {job}: no fire after {} (last: {last_fire:?})",
                expected.fires_after
            ));
        }
    }

    // (d) Every submission key made exactly one task, the one the API answered with.
    for (key, (body, answered)) in &expected.keys {
        match by_key.get(key).map(Vec::as_slice) {
            Some([t]) => {
                let id = s(&t["id"]);
                if answered.iter().any(|a| *a != id) {
                    problems.push(format!(
                        "key {key}: the API answered {answered:?}, the store has {id}"
                    ));
                }
            }
            Some(ts) => problems.push(format!("key {key}: {} tasks", ts.len())),
            None => problems.push(format!("key {key}: accepted, but no task has it")),
        }
        expected_bodies.insert(key.clone(), body.clone());
    }
    let stray: Vec<_> = by_key
        .keys()
        .filter(|k| !expected_bodies.contains_key(*k))
        .collect();
    if !stray.is_empty() {
        problems.push(format!("tasks nobody asked for: {stray:?}"));
    }

    // (b), (c) The receiver saw every key; more than once only across attempts of a retried task.
    let mut hits_by_key: BTreeMap<&str, Vec<&Hit>> = BTreeMap::new();
    for h in hits {
        hits_by_key.entry(h.key.as_str()).or_default().push(h);
    }
    stats.distinct_keys = hits_by_key.len();
    stats.raw_duplicates = hits.len() - hits_by_key.len();
    let missing: Vec<&String> = expected_bodies
        .keys()
        .filter(|k| !hits_by_key.contains_key(k.as_str()))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} keys never reached the receiver: {missing:?}",
            missing.len()
        ));
    }
    let unexpected: Vec<&&str> = hits_by_key
        .keys()
        .filter(|k| !expected_bodies.contains_key(**k))
        .collect();
    if !unexpected.is_empty() {
        problems.push(format!("the receiver got unexpected keys: {unexpected:?}"));
    }
    for (key, key_hits) in &hits_by_key {
        let Some(t) = by_key.get(*key).and_then(|ts| ts.first()) else {
            continue;
        };
        let attempts = t["attempts"].as_i64().unwrap_or(0);
        let mut seen = BTreeSet::new();
        for h in key_hits {
            if h.task_id != s(&t["id"]) {
                problems.push(format!(
                    "key {key}: delivery names task {}, not {}",
                    h.task_id, t["id"]
                ));
            }
            if !seen.insert(h.attempt) {
                problems.push(format!("key {key}: attempt {} delivered twice", h.attempt));
            }
            if h.attempt < 1 || h.attempt > attempts {
                problems.push(format!(
                    "key {key}: delivery of attempt {} but the task made {attempts}",
                    h.attempt
                ));
            }
            if let Some(body) = expected_bodies.get(*key) {
                if h.body != *body {
                    problems.push(format!(
                        "key {key}: delivered body {} instead of {body}",
                        h.body
                    ));
                }
            }
        }
        if key_hits.len() > 1 && attempts <= 1 {
            problems.push(format!(
                "key {key}: delivered {} times by a task that ran once",
                key_hits.len()
            ));
        }
        if t["state"] == "succeeded" && !seen.contains(&attempts) {
            problems.push(format!(
                "key {key}: the succeeding attempt {attempts} never reached the receiver (saw {seen:?})"
            ));
        }
    }
    if problems.is_empty() {
        Ok(stats)
    } else {
        Err(problems)
    }
}

/// The answers to one key's concurrent submissions.
pub struct Submitted {
    pub key: String,
    pub body: Value,
    pub answers: Vec<SubmitOutcome>,
}

/// Submits key `{queue}-k{n}` for n = 0, 1, … while `more(n)`, one key every `every`, each as
/// `copies` concurrent submissions (concurrent duplicates) of an `http` task to `hook`; each
/// submission is retried with its key until accepted, for up to `patience`.
pub async fn submit_stream(
    base: String,
    hook: String,
    queue: String,
    copies: usize,
    every: Duration,
    patience: Duration,
    more: impl Fn(usize) -> bool,
) -> Vec<Submitted> {
    let client = api_client();
    let mut pending = Vec::new();
    let mut k = 0;
    while more(k) {
        let key = format!("{queue}-k{k}");
        k += 1;
        let body = serde_json::json!({"key": key});
        let request = serde_json::json!({
            "task": "http",
            "args": {"url": hook, "body": body},
            "queue": queue,
            "idempotency_key": key,
            // Short, so the Redis replay cache (shared by every test run) forgets these keys soon.
            "idempotency_ttl_seconds": 3600,
        });
        let copies: Vec<_> = (0..copies)
            .map(|_| {
                let (client, base, request) = (client.clone(), base.clone(), request.clone());
                tokio::spawn(async move {
                    submit_until_accepted(&client, &base, &request, patience).await
                })
            })
            .collect();
        pending.push((key, body, copies));
        tokio::time::sleep(every).await;
    }
    let mut out = Vec::new();
    for (key, body, copies) in pending {
        let mut answers = Vec::new();
        for c in copies {
            answers.push(c.await.expect("a submission panicked"));
        }
        out.push(Submitted { key, body, answers });
    }
    out
}
