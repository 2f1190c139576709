//! S8 poison and long tasks, on a private RabbitMQ node whose consumer timeout is 5 s:
//!
//! - a poison task — the `shell` task running `sh -c 'kill -9 $PPID'`, which kills the worker that
//!   runs it — must end `failed` after its delivery limit (`max_retries + 1` attempts), each attempt
//!   costing one worker (the runner restarts dead workers, as a supervisor would); it runs on its
//!   own queue and two workers of its own, so its kills do not re-execute the other tasks;
//! - a task longer than the consumer timeout (the broker cancels the consumer and requeues the
//!   unacknowledged message while the task still runs) must not run twice: the redelivered hint
//!   finds the task running under a live lease and is dropped.
//!
//! Pass: each poison task `failed` after exactly `max_retries + 1` attempts; each long task
//! `succeeded` after one attempt with one delivery; 0 lost / 0 double-committed / 0 overlapping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::http_task;
use crate::cluster::Role;
use crate::private::CONSUMER_TIMEOUT_MS;
use crate::rig::Rig;
use crate::scenarios::s3_scheduler_crashes::first;

const POISON_RETRIES: i32 = 2;

pub async fn run(rig: &mut Rig) -> anyhow::Result<()> {
    let smoke = rig.opts.smoke;
    let (poison, long, short) = if smoke { (1, 2, 100) } else { (3, 6, 1000) };
    let long_ms = CONSUMER_TIMEOUT_MS * 2;
    rig.set_env("IDEM_SHELL_ALLOW", "sh");
    rig.start_cluster(2, 3, 4, 8).await?;
    // The poison runs on its own queue and workers: a worker it kills takes down whatever else it
    // was running, which would be re-executed for a reason that is not the one checked here.
    for i in 4..6 {
        let spec = rig.spec(
            Role::Worker,
            i,
            &["--queues", "poison", "--worker-concurrency", "2"],
            &[],
        );
        rig.cluster.start(spec).await?;
    }
    let client = rig.client().clone();
    let hook = rig.receiver.hook.clone();

    let mut finals: HashMap<String, &'static str> = HashMap::new();
    let mut poison_keys = Vec::new();
    for i in 0..poison {
        let key = format!("s8-poison{i}");
        let request = json!({
            "task": "shell",
            "args": {"program": "sh", "args": ["-c", "kill -9 $PPID"]},
            "idempotency_key": key,
            "queue": "poison",
            "max_retries": POISON_RETRIES,
        });
        let op = client
            .submit_until_settled(i, &key, &request, Duration::from_secs(30))
            .await;
        anyhow::ensure!(
            op.outcome.accepted(),
            "poison {key}: {:?} {:?}",
            op.status,
            op.error
        );
        finals.insert(key.clone(), "failed");
        poison_keys.push(key);
    }
    let mut long_keys = Vec::new();
    for i in 0..long {
        let key = format!("s8-long{i}");
        let op = client
            .submit_until_settled(
                i,
                &key,
                &http_task(&hook, &key, long_ms, json!({})),
                Duration::from_secs(30),
            )
            .await;
        anyhow::ensure!(
            op.outcome.accepted(),
            "long {key}: {:?} {:?}",
            op.status,
            op.error
        );
        long_keys.push(key);
    }
    for i in 0..short {
        let key = format!("s8-k{i}");
        let hold = rig.rng.range(20, 200);
        client
            .submit_until_settled(
                i,
                &key,
                &http_task(&hook, &key, hold, json!({})),
                Duration::from_secs(30),
            )
            .await;
    }

    // Supervise: restart dead workers until everything is final.
    let deadline = Instant::now() + Duration::from_secs(if smoke { 90 } else { 180 });
    let mut deaths = Vec::new();
    loop {
        deaths.extend(rig.cluster.revive_workers().await?);
        let open = crate::store::unfinished(&rig.pool).await.unwrap_or(1);
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open = rig.wait_all_final(0, Duration::from_secs(5)).await?;
    let (verdict, tasks, _) = rig.judge(&finals, true).await?;
    let deliveries = rig.receiver.deliveries();

    let mut poison_problems = Vec::new();
    for key in &poison_keys {
        match tasks
            .iter()
            .find(|t| t.key.as_deref() == Some(key.as_str()))
        {
            Some(t) if t.state == "failed" && t.attempts == POISON_RETRIES + 1 => {}
            Some(t) => {
                poison_problems.push(format!("{key}: {} after {} attempts", t.state, t.attempts))
            }
            None => poison_problems.push(format!("{key}: no task")),
        }
    }
    let mut long_problems = Vec::new();
    for key in &long_keys {
        let hits = deliveries.iter().filter(|d| d.key == *key).count();
        match tasks
            .iter()
            .find(|t| t.key.as_deref() == Some(key.as_str()))
        {
            Some(t) if t.state == "succeeded" && t.attempts == 1 && hits == 1 => {}
            Some(t) => long_problems.push(format!(
                "{key}: {} after {} attempts, {hits} deliveries",
                t.state, t.attempts
            )),
            None => long_problems.push(format!("{key}: no task")),
        }
    }
    let consumer_lost = rig
        .cluster
        .events
        .consumer_lost
        .load(std::sync::atomic::Ordering::Relaxed);
    rig.report.workload = format!(
        "{poison} poison shell tasks (max_retries {POISON_RETRIES}), {long} http tasks of {:.0} s (consumer timeout {:.0} s), {short} short tasks",
        long_ms as f64 / 1e3,
        CONSUMER_TIMEOUT_MS as f64 / 1e3
    );
    rig.report.faults = vec![
        format!("{} worker deaths by poison (restarted)", deaths.len()),
        format!("{consumer_lost} consumers cancelled by the broker's consumer timeout"),
    ];
    let r = &mut rig.report;
    r.check("every task final", open == 0, format!("{open} unfinished"));
    r.check(
        "poison ends failed after max_retries + 1 attempts",
        poison_problems.is_empty(),
        format!(
            "{} poison tasks, {} worker deaths; {:?}",
            poison_keys.len(),
            deaths.len(),
            first(&poison_problems)
        ),
    );
    r.check(
        "a task longer than the consumer timeout runs once",
        long_problems.is_empty(),
        format!(
            "{} long tasks, {consumer_lost} consumer cancellations seen; {:?}",
            long_keys.len(),
            first(&long_problems)
        ),
    );
    r.verdict(&verdict, true);
    r.extra = json!({"worker_deaths": deaths, "consumer_cancellations": consumer_lost});
    Ok(())
}
