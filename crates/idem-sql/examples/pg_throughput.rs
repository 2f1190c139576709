//! Throughput of the PostgreSQL store's hot paths, phase by phase, on a fresh schema: submit
//! keyless tasks in batches, claim them in batches, finish them in groups (`finish_many`), then the
//! same for keyed submits and for claims with many tasks scheduled for later.
//!
//! ```text
//! IDEM_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release -p idem-sql --example pg_throughput [tasks] [runs]
//! ```
//!
//! Each run uses its own schema (dropped afterwards); the numbers are per run, so noise from a
//! shared machine shows as spread between runs.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use idem_core::store::{ClaimRequest, Lease};
use idem_core::{Finish, QueueName, Store, WorkerId};
use idem_sql::{PgOptions, PgStore};
use idem_testkit::fixtures::{interval_job, keyed, secs, task};
use idem_testkit::services::{service_url, unique_name};
use serde_json::json;
use sqlx::Connection;

const SUBMIT_BATCH: usize = 1000;
const CLAIM_BATCH: u32 = 100;
const FINISH_GROUP: usize = 100;

fn url() -> String {
    service_url(
        "IDEM_TEST_PG_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

fn report(phase: &str, n: usize, took: Duration) {
    println!(
        "  {phase:<28} {n:>6} tasks  {:>8.1} ms  {:>9.0} tasks/s",
        took.as_secs_f64() * 1e3,
        n as f64 / took.as_secs_f64()
    );
}

fn req(now: DateTime<Utc>) -> ClaimRequest {
    ClaimRequest {
        worker: WorkerId("bench".into()),
        queues: vec![QueueName::default_queue()],
        limit: CLAIM_BATCH,
        now,
        lease_until: now + secs(300.0),
    }
}

/// Claims everything runnable in batches, then finishes it in groups; returns how many.
async fn claim_and_finish(store: &PgStore, now: DateTime<Utc>, label: &str) -> usize {
    let started = Instant::now();
    let mut leases = Vec::new();
    loop {
        let c = store.claim(&req(now)).await.unwrap();
        if c.is_empty() {
            break;
        }
        leases.extend(c.into_iter().map(|c| Lease {
            task_id: c.task.id,
            attempt: c.task.attempts,
        }));
    }
    report(&format!("claim {label}"), leases.len(), started.elapsed());

    let started = Instant::now();
    for group in leases.chunks(FINISH_GROUP) {
        let lost = store
            .renew_leases(&WorkerId("bench".into()), group, now + secs(600.0))
            .await
            .unwrap();
        assert!(lost.is_empty());
    }
    report(&format!("renew {label}"), leases.len(), started.elapsed());

    let started = Instant::now();
    for group in leases.chunks(FINISH_GROUP) {
        let items = group
            .iter()
            .map(|l| (*l, Finish::Succeeded(json!({"ok": true}))))
            .collect();
        let out = store.finish_many(items, now).await.unwrap();
        assert!(out.iter().all(|r| r.is_ok()));
    }
    report(
        &format!("finish_many {label}"),
        leases.len(),
        started.elapsed(),
    );
    leases.len()
}

async fn analyze(schema: &str) {
    let mut db = sqlx::PgConnection::connect(&url()).await.unwrap();
    // The name is ours (`unique_name`), so it needs no quoting beyond the identifier quotes.
    let analyze = format!("ANALYZE \"{schema}\".tasks");
    sqlx::query(&analyze).execute(&mut db).await.unwrap();
}

async fn run(n: usize) {
    let schema = unique_name("bench");
    let store = PgStore::open_with(
        &url(),
        PgOptions {
            schema: Some(schema.clone()),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let now = store.now().await.unwrap();

    // Keyless submits, claimed and finished.
    let started = Instant::now();
    for _ in 0..n / SUBMIT_BATCH {
        let batch = (0..SUBMIT_BATCH).map(|_| task(now)).collect();
        store.submit(batch, now).await.unwrap();
    }
    report("submit keyless", n, started.elapsed());
    // Statistics as autovacuum would leave them after a quiet moment: nothing running, nothing
    // due. (A fresh table has none, and the planner's defaults hide plans that real ones choose.)
    analyze(&schema).await;
    assert_eq!(claim_and_finish(&store, now, "").await, n);

    // Keyed submits (the per-item path), for comparison.
    let keyed_n = n / 4;
    let started = Instant::now();
    for b in 0..keyed_n / SUBMIT_BATCH {
        let batch = (0..SUBMIT_BATCH)
            .map(|i| keyed(task(now), &format!("k-{b}-{i}"), 3600.0))
            .collect();
        store.submit(batch, now).await.unwrap();
    }
    report("submit keyed", keyed_n, started.elapsed());

    // Claims while many tasks wait for later (promotion finds nothing due among them).
    let later = now + secs(3600.0);
    for _ in 0..n / SUBMIT_BATCH {
        let batch = (0..SUBMIT_BATCH).map(|_| task(later)).collect();
        store.submit(batch, now).await.unwrap();
    }
    claim_and_finish(&store, now, "(with scheduled)").await;

    // Empty claims (an idle worker's poll) with the scheduled backlog present.
    let polls = 1000;
    let started = Instant::now();
    for _ in 0..polls {
        assert!(store.claim(&req(now)).await.unwrap().is_empty());
    }
    let took = started.elapsed();
    println!(
        "  {:<28} {polls:>6} polls  {:>8.1} ms  {:>9.0} polls/s",
        "empty claim",
        took.as_secs_f64() * 1e3,
        polls as f64 / took.as_secs_f64()
    );

    analyze(&schema).await;
    // A trickle of due tasks: each claim finds exactly one scheduled task come due (promotion has
    // something to do on every poll) while the table holds every task above.
    let trickle = 1000;
    let base = now + secs(1800.0);
    let step = |i: usize| base + secs(0.01 * i as f64);
    let batch = (0..trickle).map(|i| task(step(i))).collect();
    store.submit(batch, now).await.unwrap();
    let started = Instant::now();
    let mut claimed = 0;
    for i in 0..trickle {
        claimed += store.claim(&req(step(i))).await.unwrap().len();
    }
    assert_eq!(claimed, trickle);
    report("claim (one due per poll)", trickle, started.elapsed());

    // Fires: jobs due now, one slot each, in passes of 100.
    let jobs = 500;
    for j in 0..jobs {
        store
            .create_job(interval_job(&format!("j{j}"), 3600.0, now), false)
            .await
            .unwrap();
    }
    let started = Instant::now();
    let mut fired = 0;
    loop {
        let pass = store.fire_due(now, 100).await.unwrap();
        if pass.jobs == 0 {
            break;
        }
        fired += pass.fires.iter().filter(|f| f.task_id.is_some()).count();
    }
    assert_eq!(fired, jobs);
    report("fire_due (jobs)", jobs, started.elapsed());

    drop(store);
    let mut db = sqlx::PgConnection::connect(&url()).await.unwrap();
    // The name is ours (`unique_name`), so it needs no quoting beyond the identifier quotes.
    let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
    sqlx::query(&drop).execute(&mut db).await.unwrap();
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(20_000, |a| a.parse().unwrap());
    let runs: usize = args.next().map_or(3, |a| a.parse().unwrap());
    for r in 1..=runs {
        println!("run {r}:");
        run(n).await;
    }
}
