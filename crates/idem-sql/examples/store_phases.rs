//! Times the store's hot path without HTTP or a worker: N keyless tasks submitted in batches of
//! 1,000, then claimed in batches of C and finished in groups of C, until all are done.
//!
//! `cargo run --release -p idem-sql --example store_phases -- sqlite:///tmp/x.db 20000 32`
//! (or a `postgres://` URL of an empty database). Prints one JSON line.

use std::sync::Arc;
use std::time::Instant;

use idem_core::store::{ClaimRequest, Lease};
use idem_core::{Finish, QueueName, Store, WorkerId};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "sqlite:///tmp/idem-phases.db".into());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let c: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let store: Arc<dyn Store> = if url.starts_with("sqlite:") {
        Arc::new(idem_sql::SqliteStore::open(&url).await.expect("open"))
    } else {
        Arc::new(idem_sql::postgres::PgStore::open(&url).await.expect("open"))
    };
    let now = store.now().await.unwrap();
    let t = Instant::now();
    for start in (0..n).step_by(1000) {
        let batch = (start..n.min(start + 1000))
            .map(|_| idem_testkit::fixtures::task(now))
            .collect();
        store.submit(batch, now).await.unwrap();
    }
    let submit = t.elapsed().as_secs_f64();
    let (mut claim_s, mut finish_s, mut done) = (0.0, 0.0, 0);
    while done < n {
        let t = Instant::now();
        let claims = store
            .claim(&ClaimRequest {
                worker: WorkerId("bench".into()),
                queues: vec![QueueName::default_queue()],
                limit: c,
                now,
                lease_until: now + chrono::Duration::seconds(60),
            })
            .await
            .unwrap();
        claim_s += t.elapsed().as_secs_f64();
        assert!(!claims.is_empty(), "nothing left to claim at {done}");
        let t = Instant::now();
        let items = claims
            .iter()
            .map(|cl| {
                (
                    Lease {
                        task_id: cl.task.id,
                        attempt: cl.task.attempts,
                    },
                    Finish::Succeeded(serde_json::Value::Null),
                )
            })
            .collect();
        let out = store.finish_many(items, now).await.unwrap();
        finish_s += t.elapsed().as_secs_f64();
        done += out.len();
    }
    let per = |s: f64| (n as f64 / s).round();
    println!(
        "{}",
        serde_json::json!({"url": url.split('?').next(), "n": n, "batch": c,
            "submit_per_s": per(submit), "claim_per_s": per(claim_s), "finish_per_s": per(finish_s),
            "claim_finish_per_s": per(claim_s + finish_s)})
    );
}
