//! Distributed deployments of the real binary: one API, three schedulers and two
//! workers share one fresh PostgreSQL database — with RabbitMQ and Redis (the full shape) or alone
//! (Postgres only). Jobs fire every second and keyed submissions arrive, some of them concurrent
//! duplicates, while one scheduler and one worker are killed with SIGKILL. Afterwards every fire has
//! exactly one task, every key exactly one task, every task succeeded, and an HTTP receiver in this
//! process saw every key — more than once only for tasks that ran a second attempt (at-least-once
//! delivery; the receiver dedups by `Idempotency-Key`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Expected, Proc, Receiver, TestDb};
use idem_testkit::services::{or_skip, unique_name};
use serde_json::json;

/// One run's size and timing.
struct Shape {
    /// RabbitMQ and Redis (the full shape), or the store alone.
    full: bool,
    schedulers: usize,
    workers: usize,
    jobs: usize,
    /// Distinct submission keys, each submitted `copies` times at once, one key every `key_every`.
    keys: usize,
    copies: usize,
    key_every: Duration,
    /// From the first job to the kill, and from the kill to pausing the jobs.
    before_kill: Duration,
    after_kill: Duration,
}

async fn run(shape: Shape) {
    let started = Instant::now();
    let (amqp, redis) = (common::amqp_url(), common::redis_url());
    if shape.full {
        if or_skip("RabbitMQ", common::amqp_reachable(&amqp).await).is_none() {
            return;
        }
        if or_skip("Redis", common::redis_ping(&redis).await).is_none() {
            return;
        }
    }
    let Some(db) = or_skip("PostgreSQL", TestDb::create(&common::pg_url()).await) else {
        return;
    };
    let queue = unique_name("q");
    let receiver = Receiver::start().await;

    let mut env: Vec<(String, String)> = vec![
        ("IDEM_DATABASE_URL".into(), db.url.clone()),
        ("IDEM_HTTP_ALLOW_PRIVATE".into(), "true".into()),
        ("IDEM_LEASE_SECONDS".into(), "2".into()),
        ("IDEM_POLL_SECONDS".into(), "0.5".into()),
        // Twelve processes may share the server (both tests of this file run at once).
        ("IDEM_DATABASE_MAX_CONNECTIONS".into(), "5".into()),
    ];
    if shape.full {
        env.push(("IDEM_BROKER_URL".into(), amqp.clone()));
        env.push(("IDEM_REDIS_URL".into(), redis.clone()));
    }
    let migrated = Command::new(env!("CARGO_BIN_EXE_idem"))
        .arg("migrate")
        .envs(env.iter().cloned())
        .env("IDEM_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "idem migrate: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );

    // The API first, then the schedulers, then the workers: `procs` keeps that order.
    let mut specs = vec![(
        vec!["api".to_owned(), "--bind".into(), "127.0.0.1:0".into()],
        env.clone(),
    )];
    for _ in 0..shape.schedulers {
        specs.push((vec!["scheduler".to_owned()], env.clone()));
    }
    for _ in 0..shape.workers {
        specs.push((
            vec![
                "worker".to_owned(),
                "--queues".into(),
                queue.clone(),
                "--worker-concurrency".into(),
                "4".into(),
            ],
            env.clone(),
        ));
    }
    let mut procs = tokio::task::block_in_place(|| Proc::spawn_roles(&specs));
    let names: Vec<String> = std::iter::once("api".to_owned())
        .chain((0..shape.schedulers).map(|i| format!("scheduler {i}")))
        .chain((0..shape.workers).map(|i| format!("worker {i}")))
        .collect();
    let base = procs[0].base.clone();
    let client = common::api_client();
    eprintln!(
        "{} processes up after {:?} (database {}, queue {queue})",
        procs.len(),
        started.elapsed(),
        db.name
    );

    let mut jobs = BTreeMap::new();
    for i in 0..shape.jobs {
        let id = format!("{queue}-j{i}");
        let body = json!({"job": i});
        let spec = json!({
            "id": id,
            "task": "http",
            "args": {"url": receiver.hook, "body": body},
            "trigger": {"type": "interval", "every_seconds": 1},
            "queue": queue,
            "max_instances": 5,
        });
        let (status, job) = common::post_json(&client, &format!("{base}/api/v1/jobs"), &spec)
            .await
            .unwrap();
        assert_eq!(status, 201, "{job}");
        jobs.insert(id, body);
    }
    let keys = shape.keys;
    let submitter = tokio::spawn(common::submit_stream(
        base.clone(),
        receiver.hook.clone(),
        queue.clone(),
        shape.copies,
        shape.key_every,
        Duration::from_secs(30),
        move |k| k < keys,
    ));

    // Let it run, then kill one scheduler and one worker without warning.
    tokio::time::sleep(shape.before_kill).await;
    let (scheduler, worker) = (1, 1 + shape.schedulers);
    for i in [scheduler, worker] {
        procs[i].signal(9);
        procs[i]
            .wait_exit(Duration::from_secs(10))
            .expect("a SIGKILLed process exits");
    }
    let killed_at = chrono::Utc::now();
    eprintln!(
        "killed {} and {} at {killed_at}",
        names[scheduler], names[worker]
    );
    tokio::time::sleep(shape.after_kill).await;

    for id in jobs.keys() {
        let url = format!("{base}/api/v1/jobs/{id}/pause");
        let (status, job) = common::post_json(&client, &url, &json!({})).await.unwrap();
        assert_eq!(status, 200, "{job}");
    }
    let submitted = submitter.await.unwrap();
    let mut keys = BTreeMap::new();
    let mut failed_tries = 0;
    let mut problems = Vec::new();
    for s in &submitted {
        let mut ids = BTreeSet::new();
        let mut created = 0;
        let mut retried = false;
        for a in &s.answers {
            match a {
                Ok((status, task, failures)) => {
                    ids.insert(task["id"].as_str().unwrap_or_default().to_owned());
                    created += usize::from(*status == 202);
                    failed_tries += failures.len();
                    retried |= !failures.is_empty();
                }
                Err(e) => problems.push(format!("key {}: a submission was given up: {e}", s.key)),
            }
        }
        // Concurrent duplicates: one creates the task (202), the others replay it (200).
        if !retried && created != 1 {
            problems.push(format!("key {}: {created} submissions answered 202", s.key));
        }
        keys.insert(s.key.clone(), (s.body.clone(), ids));
    }

    let tasks = match common::wait_all_final(&client, &base, Duration::from_secs(40)).await {
        Ok(tasks) => tasks,
        Err(e) => {
            for (name, p) in names.iter().zip(&procs) {
                p.print_logs(name, 60);
            }
            let hint = if shape.full && e.contains("state=\"queued\" attempts=0") {
                "; a task left `queued` with 0 attempts and `dispatched_at` set in the store is one \
                 whose dispatch (outbox mark committed, broker confirm pending) died with a killed \
                 process: another dispatcher should take it over after the 10 s publish lease"
            } else {
                ""
            };
            panic!("{e} (database {} kept{hint})", db.name);
        }
    };
    let expected = Expected {
        jobs,
        keys,
        fires_after: killed_at + chrono::Duration::seconds(2),
    };
    let named: Vec<(&str, &Proc)> = names.iter().map(|n| n.as_ref()).zip(procs.iter()).collect();
    let stats = common::verify_or_fail(
        &client, &base, &db.name, &expected, &tasks, &receiver, problems, &named, 40,
    )
    .await;
    eprintln!(
        "ok after {:?}: {} tasks ({} fires, {} missed, {} skipped_overlap; {} ran more than one \
         attempt); {} deliveries of {} keys, {} raw duplicates (deduplicated by Idempotency-Key); \
         {} submission tries failed and were retried",
        started.elapsed(),
        stats.tasks,
        stats.fires,
        stats.missed,
        stats.skipped_overlap,
        stats.retried_tasks,
        stats.deliveries,
        stats.distinct_keys,
        stats.raw_duplicates,
        failed_tries
    );

    for p in &mut procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    if shape.full {
        common::delete_amqp_queue(&amqp, &format!("idem.{queue}")).await;
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_schedulers_two_workers_and_an_api_deliver_every_fire_and_task_once() {
    run(Shape {
        full: true,
        schedulers: 3,
        workers: 2,
        jobs: 20,
        keys: 50,
        copies: 4,
        key_every: Duration::from_millis(200),
        before_kill: Duration::from_secs(5),
        after_kill: Duration::from_secs(5),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_only_schedulers_and_workers_deliver_every_fire_and_task_once() {
    run(Shape {
        full: false,
        schedulers: 3,
        workers: 2,
        jobs: 10,
        keys: 30,
        copies: 4,
        key_every: Duration::from_millis(200),
        before_kill: Duration::from_secs(4),
        after_kill: Duration::from_secs(4),
    })
    .await;
}
