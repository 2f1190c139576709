//! S4 paused lease holder: a worker that holds both a running task and the maintenance leader lease
//! is frozen with SIGSTOP for twice the lease TTL — long enough for its task lease and its leader
//! lease to expire and be taken by others — then thawed with SIGCONT and stopped with SIGTERM at
//! once, so its stale state acts: the task's late completion, and the leader lease's release on
//! shutdown.
//!
//! Setup: worker 0 starts first (so it takes the leader lease) and is the only one on queue `s4`;
//! the long task goes there. Once the task is in flight at the receiver, worker 0 is frozen and a
//! fresh worker on `s4` is started to take the task over.
//!
//! Pass: the task ends `succeeded` with attempt 2's result and keeps it; the frozen worker's late
//! result is refused by its fencing token (or, with a lease deadline, never sent); the leader lease
//! the new leader holds is still there, with the same token, after the old leader's release.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::http_task;
use crate::cluster::Role;
use crate::cmd;
use crate::rig::{Rig, LEASE_SECONDS};
use crate::scenarios::s3_scheduler_crashes::first;

/// The leader lease's key in Redis (idem's default prefix).
const LEADER_KEY: &str = "idem:lock:maintenance-leader";

async fn leader_token(url: &str) -> anyhow::Result<Option<String>> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("GET")
        .arg(LEADER_KEY)
        .query_async(&mut conn)
        .await?)
}

pub async fn run(rig: &mut Rig) -> anyhow::Result<()> {
    let smoke = rig.opts.smoke;
    let rounds = if smoke { 1 } else { 3 };
    let freeze = Duration::from_secs_f64(2.0 * LEASE_SECONDS);
    rig.report.workload = format!(
        "{rounds} × one 4 s http task on a worker that also leads maintenance, plus background tasks"
    );
    rig.report.faults = vec![format!(
        "{rounds} × SIGSTOP worker for {:.0} s (2 × lease TTL), then SIGCONT + SIGTERM",
        freeze.as_secs_f64()
    )];
    let mut problems = Vec::new();
    let mut late_paths = Vec::new();
    let mut lock_kept = 0;
    let mut next_worker = 10;
    let mut long_keys: Vec<String> = Vec::new();
    let mut freezes = Vec::new();

    // The frozen worker of each round is a fresh slot; the others are shared.
    let w0 = rig.spec(Role::Worker, 0, &["--queues", "s4"], &[]);
    rig.cluster.start(w0).await?;
    cmd::poll(
        "worker 0 to lead maintenance",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            rig.cluster
                .events
                .leaders
                .lock()
                .unwrap()
                .iter()
                .any(|(_, l, _)| l.starts_with("worker-0"))
                .then_some(())
        },
    )
    .await?;
    let mut specs = vec![
        rig.spec(Role::Api, 0, &[], &[]),
        rig.spec(Role::Api, 1, &[], &[]),
    ];
    for i in 0..2 {
        specs.push(rig.spec(Role::Scheduler, i, &[], &[]));
    }
    for i in 1..3 {
        specs.push(rig.spec(Role::Worker, i, &[], &[]));
    }
    rig.cluster.start_all(specs).await?;
    rig.start_client();
    let client = rig.client().clone();
    let hook = rig.receiver.hook.clone();

    // Background load on the default queue, all along.
    let bg = {
        let (client, hook) = (client.clone(), hook.clone());
        let n = if smoke { 200 } else { 1000 };
        tokio::spawn(async move {
            for i in 0..n {
                let key = format!("s4-bg{i}");
                client
                    .submit_until_settled(
                        i,
                        &key,
                        &http_task(&hook, &key, 100, json!({})),
                        Duration::from_secs(30),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let holder = Role::Worker;
    let mut holder_index = 0;
    for round in 0..rounds {
        if round > 0 {
            // The next round's holder: a fresh worker on `s4` that must win the leader lease. The
            // last round's taker (the only other worker on `s4`) leaves, and everything else that
            // could lead is frozen until the new worker leads.
            // ... once the last round's task is done (a worker that leaves mid-task hands it back,
            // which would add an attempt for a reason that is not the one checked here).
            let prev: String = long_keys.last().cloned().unwrap_or_default();
            let pool = rig.pool.clone();
            cmd::poll(
                "the last long task to finish",
                Duration::from_secs(30),
                Duration::from_millis(100),
                || {
                    let (pool, prev) = (pool.clone(), prev.clone());
                    async move {
                        let state: Option<String> = sqlx::query_scalar(
                            "SELECT state FROM tasks WHERE idempotency_key = $1",
                        )
                        .bind(prev)
                        .fetch_optional(&pool)
                        .await
                        .ok()
                        .flatten();
                        state.filter(|s| crate::store::is_final(s)).map(|_| ())
                    }
                },
            )
            .await?;
            rig.cluster.signal(holder, holder_index, "TERM").await?;
            let pid = rig.cluster.get(holder, holder_index).pid;
            cmd::poll(
                "the last taker to exit",
                Duration::from_secs(20),
                Duration::from_millis(50),
                || async { (!cmd::alive(pid)).then_some(()) },
            )
            .await?;
            holder_index = next_worker;
            next_worker += 1;
            let spec = rig.spec(Role::Worker, holder_index, &["--queues", "s4"], &[]);
            let others = [
                (Role::Scheduler, 0),
                (Role::Scheduler, 1),
                (Role::Worker, 1),
                (Role::Worker, 2),
            ];
            for (r, i) in others {
                rig.cluster.signal(r, i, "STOP").await?;
            }
            let label = spec.label();
            let started = rig.cluster.start(spec).await;
            let led = cmd::poll(
                "the new worker to lead",
                Duration::from_secs(20),
                Duration::from_millis(100),
                || async {
                    rig.cluster
                        .events
                        .leaders
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|(_, l, _)| l.starts_with(&format!("{label}.")))
                        .then_some(())
                },
            )
            .await;
            for (r, i) in others {
                rig.cluster.signal(r, i, "CONT").await?;
            }
            started?;
            led?;
        }
        let key = format!("s4-long{round}");
        long_keys.push(key.clone());
        let op = client
            .submit_until_settled(
                round,
                &key,
                &http_task(&hook, &key, 4000, json!({"queue": "s4"})),
                Duration::from_secs(30),
            )
            .await;
        let task_id = op.task_id.clone().unwrap_or_default();
        cmd::poll(
            "the long task in flight",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || async {
                rig.receiver
                    .in_flight()
                    .iter()
                    .any(|(t, a, _)| *t == task_id && *a == 1)
                    .then_some(())
            },
        )
        .await?;
        let frozen_pid = rig.cluster.signal(holder, holder_index, "STOP").await?;
        let frozen_label = rig.cluster.get(holder, holder_index).label();
        let fenced_before = fenced_of(rig, &frozen_label);
        let stopped_at = Instant::now();
        // The taker: a fresh worker on `s4`.
        let taker = next_worker;
        next_worker += 1;
        let spec = rig.spec(Role::Worker, taker, &["--queues", "s4"], &[]);
        rig.cluster.start(spec).await?;
        tokio::time::sleep_until((stopped_at + freeze).into()).await;
        // The frozen worker also held the reaper's leader lease (TTL 5 s), so the takeover can
        // need longer than the freeze: stay frozen until attempt 2 runs, so its result is late.
        let tid = task_id.clone();
        let taken = cmd::poll(
            "attempt 2 to start",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || async {
                let running = rig
                    .receiver
                    .in_flight()
                    .iter()
                    .any(|(t, a, _)| *t == tid && *a >= 2);
                let done = rig
                    .receiver
                    .deliveries()
                    .iter()
                    .any(|d| d.task_id == tid && d.attempt >= 2);
                (running || done).then_some(())
            },
        )
        .await;
        freezes.push(stopped_at.elapsed().as_secs_f64());
        taken?;
        let token_before = leader_token(&rig.iso.redis_url).await?;
        rig.cluster.signal(holder, holder_index, "CONT").await?;
        rig.cluster.signal(holder, holder_index, "TERM").await?;
        cmd::poll(
            "the thawed worker to exit",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async { (!cmd::alive(frozen_pid)).then_some(()) },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let token_after = leader_token(&rig.iso.redis_url).await?;
        if token_before.is_some() && token_before == token_after {
            lock_kept += 1;
        } else {
            problems.push(format!(
                "round {round}: the leader lease was {token_before:?} before the old leader's release and {token_after:?} after"
            ));
        }
        let log =
            std::fs::read_to_string(&rig.cluster.get(holder, holder_index).log).unwrap_or_default();
        let fenced = fenced_of(rig, &frozen_label) > fenced_before;
        let about: Vec<&str> = log.lines().filter(|l| l.contains(&task_id)).collect();
        let deadline = about
            .iter()
            .any(|l| l.contains("attempt stopped") && l.contains("could not be renewed"));
        let stopped = about.iter().any(|l| l.contains("attempt stopped"));
        late_paths.push(if fenced {
            "refused by the fencing token"
        } else if deadline {
            "stopped at its lease deadline, nothing sent"
        } else if stopped {
            "stopped before sending (lease lost)"
        } else {
            "not sent"
        });
        // The taker is the one to leave at the start of the next round.
        holder_index = taker;
    }
    bg.await?;
    let open = rig.wait_all_final(0, Duration::from_secs(60)).await?;
    // Any late write would land by now; the watcher sees a change.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (verdict, tasks, _) = rig.judge(&HashMap::new(), true).await?;
    let mut task_problems = Vec::new();
    for key in &long_keys {
        match tasks
            .iter()
            .find(|t| t.key.as_deref() == Some(key.as_str()))
        {
            Some(t) if t.state == "succeeded" && t.attempts == 2 => {
                let a = t
                    .result
                    .as_ref()
                    .and_then(|r| r["body"]["attempt"].as_i64());
                if a != Some(2) {
                    task_problems.push(format!("{key}: result of attempt {a:?}"));
                }
            }
            Some(t) => {
                task_problems.push(format!("{key}: {} after {} attempts", t.state, t.attempts))
            }
            None => task_problems.push(format!("{key}: no task")),
        }
    }
    let r = &mut rig.report;
    r.check("every task final", open == 0, format!("{open} unfinished"));
    r.check(
        "the late completion is not committed",
        task_problems.is_empty(),
        format!(
            "{} long tasks; late results: {late_paths:?}; {:?}",
            long_keys.len(),
            first(&task_problems)
        ),
    );
    r.check(
        "the late lock release deletes nothing",
        lock_kept == rounds,
        format!(
            "{lock_kept} of {rounds} leader leases survived the old holder's release; {problems:?}"
        ),
    );
    r.verdict(&verdict, true);
    r.check(
        "frozen for 2 × lease TTL or until taken over",
        true,
        format!(
            "frozen {:?} s (the takeover waits for the leader lease the frozen worker held, and for a hint its open consumer does not swallow)",
            freezes
                .iter()
                .map(|f| (f * 10.0).round() / 10.0)
                .collect::<Vec<_>>()
        ),
    );
    r.extra = json!({"late_results": late_paths, "freeze_s": freezes});
    Ok(())
}

fn fenced_of(rig: &Rig, label: &str) -> u64 {
    rig.cluster
        .events
        .fenced_by
        .lock()
        .unwrap()
        .get(label)
        .copied()
        .unwrap_or(0)
}
