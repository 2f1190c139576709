//! Times the store's share of one latency round trip, without HTTP or a worker: one task at a
//! time, N times, a one-item `submit` (optionally with a key), a `claim` of one, a one-item
//! `finish_many` and a `get_task` — the store calls `idem serve` makes for one round trip.
//! Prints the p50 and p99 of each phase in microseconds, as one JSON line.
//!
//! `cargo run --release -p idem-sql --example round_trip -- sqlite:///tmp/x.db 2000 [keys]`

use std::sync::Arc;
use std::time::Instant;

use idem_core::store::{ClaimRequest, Lease};
use idem_core::{Finish, QueueName, Store, WorkerId};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    (v[i] * 10.0).round() / 10.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "sqlite:///tmp/idem-round-trip.db".into());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let keys = args.get(3).is_some_and(|s| s == "keys");
    let store: Arc<dyn Store> = if url.starts_with("sqlite:") {
        Arc::new(idem_sql::SqliteStore::open(&url).await.expect("open"))
    } else {
        Arc::new(idem_sql::postgres::PgStore::open(&url).await.expect("open"))
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let phases = ["submit", "claim", "finish", "get", "total"];
    let mut us: Vec<Vec<f64>> = vec![Vec::with_capacity(n); phases.len()];
    for i in 0..n {
        let now = store.now().await.unwrap();
        let mut task = idem_testkit::fixtures::task(now);
        if keys {
            task = idem_testkit::fixtures::keyed(task, &format!("{run}-{i}"), 3600.0);
        }
        let start = Instant::now();
        let mut lap = Instant::now();
        let mut laps = [0.0; 4];
        let mut mark = |k: usize, lap: &mut Instant| {
            laps[k] = lap.elapsed().as_secs_f64() * 1e6;
            *lap = Instant::now();
        };
        let submitted = store.submit(vec![task], now).await.unwrap();
        mark(0, &mut lap);
        let claims = store
            .claim(&ClaimRequest {
                worker: WorkerId("round-trip".into()),
                queues: vec![QueueName::default_queue()],
                limit: 1,
                now,
                lease_until: now + chrono::Duration::seconds(60),
            })
            .await
            .unwrap();
        mark(1, &mut lap);
        let claim = claims.first().expect("the task just submitted is claimed");
        assert_eq!(claim.task.id, submitted[0].task.id);
        let lease = Lease {
            task_id: claim.task.id,
            attempt: claim.task.attempts,
        };
        let items = vec![(lease, Finish::Succeeded(serde_json::Value::Null))];
        store
            .finish_many(items, now)
            .await
            .unwrap()
            .remove(0)
            .unwrap();
        mark(2, &mut lap);
        let task = store.get_task(lease.task_id).await.unwrap().unwrap();
        assert!(task.state.is_final());
        mark(3, &mut lap);
        let total = start.elapsed().as_secs_f64() * 1e6;
        for (k, v) in laps.iter().enumerate() {
            us[k].push(*v);
        }
        us[4].push(total);
    }
    let mut out = serde_json::Map::new();
    out.insert("url".into(), url.split('?').next().into());
    out.insert("n".into(), n.into());
    out.insert("keys".into(), keys.into());
    for (name, v) in phases.iter().zip(us.iter_mut()) {
        out.insert(format!("{name}_p50_us"), pct(v, 50.0).into());
        out.insert(format!("{name}_p99_us"), pct(v, 99.0).into());
    }
    println!("{}", serde_json::Value::Object(out));
}
