//! The HTTP receiver the `http` tasks call: one loopback listener that records every request with
//! its `Idempotency-Key`, `Idem-Task-Id` and `Idem-Attempt` headers, when it started and when it
//! ended, and holds each request open for the time the task's body asks (`hold_ms`), to model work
//! of that length.
//!
//! It is a minimal HTTP/1.1 server written here rather than a framework because the oracle needs the
//! moment a caller *went away*: while it holds a request it keeps reading the socket, so a worker
//! killed (or cut off and reset) mid-request ends that delivery's interval at once instead of when
//! the hold would have ended. Overlapping attempts are judged on these intervals.
//!
//! Invariant: a delivery is recorded when its request has been read completely and is closed (with
//! its end time and whether the answer was written) exactly once, whatever ends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the receiver got.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub key: String,
    pub task_id: String,
    pub attempt: i64,
    pub body: Value,
    /// Milliseconds since the run's start.
    pub start_ms: f64,
    pub end_ms: f64,
    /// Whether the answer was written (false: the caller went away first).
    pub answered: bool,
}

type Log = Arc<Mutex<Vec<Delivery>>>;
/// The requests being held right now: (task id, attempt, start ms) by connection number.
type Open = Arc<Mutex<HashMap<u64, (String, i64, f64)>>>;

pub struct Receiver {
    /// The hook's URL, for the `http` task's `url`.
    pub hook: String,
    log: Log,
    open: Open,
    server: tokio::task::JoinHandle<()>,
}

/// The largest request head or body accepted.
const MAX_REQUEST: usize = 1 << 20;

impl Receiver {
    pub async fn start(t0: Instant) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the receiver")?;
        let addr = listener.local_addr()?;
        let log: Log = Arc::default();
        let open: Open = Arc::default();
        let server = {
            let (log, open) = (log.clone(), open.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while let Ok((stream, _)) = listener.accept().await {
                    n += 1;
                    let (log, open) = (log.clone(), open.clone());
                    tokio::spawn(async move {
                        let _ = serve(stream, log, open.clone(), n, t0).await;
                        open.lock().unwrap().remove(&n);
                    });
                }
            })
        };
        Ok(Receiver {
            hook: format!("http://{addr}/hook"),
            log,
            open,
            server,
        })
    }

    /// Every delivery closed so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().unwrap().clone()
    }

    /// The end time (ms) of the first answered delivery with this `Idempotency-Key`.
    pub fn answered(&self, key: &str) -> Option<f64> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|d| d.answered && d.key == key)
            .map(|d| d.end_ms)
    }

    /// The requests being held right now: (task id, attempt, start ms).
    pub fn in_flight(&self) -> Vec<(String, i64, f64)> {
        self.open.lock().unwrap().values().cloned().collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// Serves one connection: requests one after another (keep-alive) until the caller closes it.
async fn serve(
    mut stream: TcpStream,
    log: Log,
    open: Open,
    conn: u64,
    t0: Instant,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // The head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_REQUEST || read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| -> String {
            head.lines()
                .skip(1)
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_default()
        };
        let length: usize = header("content-length").parse().unwrap_or(0);
        let close = header("connection").eq_ignore_ascii_case("close");
        while buf.len() < head_end + length {
            if buf.len() > MAX_REQUEST + head_end || read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body: Value =
            serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
        buf.drain(..head_end + length);

        let mut d = Delivery {
            key: header("idempotency-key"),
            task_id: header("idem-task-id"),
            attempt: header("idem-attempt").parse().unwrap_or(-1),
            start_ms: ms_since(t0),
            end_ms: 0.0,
            answered: false,
            body,
        };
        let hold = Duration::from_millis(d.body["hold_ms"].as_u64().unwrap_or(0));
        open.lock()
            .unwrap()
            .insert(conn, (d.task_id.clone(), d.attempt, d.start_ms));
        // Hold the request, watching the socket: EOF or an error means the caller is gone.
        let until = tokio::time::Instant::now() + hold;
        let gone = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break false,
                n = read_more(&mut stream, &mut buf) => {
                    if !matches!(n, Ok(n) if n > 0) {
                        break true;
                    }
                }
            }
        };
        open.lock().unwrap().remove(&conn);
        if gone {
            d.end_ms = ms_since(t0);
            log.lock().unwrap().push(d);
            return Ok(());
        }
        // Bytes that arrived during the hold (none are expected: callers do not pipeline) stay in
        // `buf` for the next request.
        let answer = json!({"attempt": d.attempt, "task_id": d.task_id}).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        let written = stream.write_all(response.as_bytes()).await.is_ok();
        d.end_ms = ms_since(t0);
        d.answered = written;
        log.lock().unwrap().push(d);
        if !written || close {
            return Ok(());
        }
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
