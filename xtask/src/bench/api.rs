//! The few calls of idem's HTTP API the benchmarks make, and a load loop: C concurrent tasks, each
//! with its own keep-alive connection, working through a shared counter of requests.
//!
//! Invariant: every loop is bounded by a request count and a deadline.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// A client for one-at-a-time calls (submissions in batches, polling).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("a plain HTTP client builds")
}

/// A client that keeps exactly one connection: one per task of a load loop.
fn one_connection() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()
        .expect("a plain HTTP client builds")
}

/// Waits until `GET /health/ready` answers 200.
pub async fn wait_ready(http: &reqwest::Client, base: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(r) = http.get(format!("{base}/health/ready")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{base} was not ready within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `GET /api/v1/workers` lists at least `n` workers.
pub async fn wait_workers(
    http: &reqwest::Client,
    base: &str,
    n: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let seen = match http.get(format!("{base}/api/v1/workers")).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["items"].as_array().map(Vec::len))
                .unwrap_or(0),
            Err(_) => 0,
        };
        if seen >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{base} lists {seen} of {n} workers after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `POST /api/v1/tasks/submit/batch`; fails unless 202.
pub async fn submit_batch(
    http: &reqwest::Client,
    base: &str,
    items: Vec<Value>,
) -> anyhow::Result<()> {
    let r = http
        .post(format!("{base}/api/v1/tasks/submit/batch"))
        .json(&json!({ "items": items }))
        .send()
        .await
        .context("POST /api/v1/tasks/submit/batch")?;
    let status = r.status();
    if status.as_u16() != 202 {
        let body = r.text().await.unwrap_or_default();
        bail!("batch submit answered {status}: {body}");
    }
    Ok(())
}

/// Whether no task is scheduled, queued, running or retrying (one `limit=1` listing per state).
pub async fn drained(http: &reqwest::Client, base: &str) -> anyhow::Result<bool> {
    for state in ["queued", "running", "scheduled", "retrying"] {
        let v: Value = http
            .get(format!("{base}/api/v1/tasks?state={state}&limit=1"))
            .send()
            .await
            .context("GET /api/v1/tasks")?
            .error_for_status()?
            .json()
            .await?;
        if v["items"].as_array().is_some_and(|a| !a.is_empty()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What a load loop did.
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// Requests sent (answered or not).
    pub sent: u64,
    /// Requests the call judged accepted.
    pub ok: u64,
    /// Requests that failed or were refused.
    pub failed: u64,
    pub seconds: f64,
    /// The first few failures, for the record.
    pub errors: Vec<String>,
}

impl Load {
    pub fn per_s(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

/// Runs `call(client, i)` for i in 0..total with `conns` concurrent tasks, each with its own
/// keep-alive connection, until every i is done or `limit` has passed. `call` answers Ok(true) for
/// an accepted request, Ok(false) or Err for a failed one.
pub async fn load<F, Fut>(conns: usize, total: usize, limit: Duration, call: F) -> Load
where
    F: Fn(reqwest::Client, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send + 'static,
{
    let call = Arc::new(call);
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = Vec::new();
    for _ in 0..conns.max(1) {
        let (call, next, ok, failed, errors) = (
            call.clone(),
            next.clone(),
            ok.clone(),
            failed.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = one_connection();
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                match call(http.clone(), i).await {
                    Ok(true) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    r => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut e = errors.lock().unwrap();
                        if e.len() < 5 {
                            e.push(match r {
                                Err(err) => format!("{err:#}"),
                                _ => "refused".to_owned(),
                            });
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let errors = errors.lock().unwrap().clone();
    Load {
        sent: ok + failed,
        ok,
        failed,
        seconds,
        errors,
    }
}

/// Creates jobs `body(i)` for i in 0..n with 32 connections; the load's record.
pub async fn create_jobs<B>(base: &str, n: usize, limit: Duration, body: B) -> Load
where
    B: Fn(usize) -> Value + Send + Sync + 'static,
{
    let url = format!("{base}/api/v1/jobs");
    let body = Arc::new(body);
    load(32, n, limit, move |http, i| {
        let url = url.clone();
        let req = body(i);
        async move {
            let r = http.post(&url).json(&req).send().await?;
            let status = r.status().as_u16();
            if status == 201 || status == 200 {
                Ok(true)
            } else {
                bail!(
                    "job create answered {status}: {}",
                    r.text().await.unwrap_or_default()
                )
            }
        }
    })
    .await
}
