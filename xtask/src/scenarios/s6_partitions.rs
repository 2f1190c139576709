//! S6 partitions: every worker reaches PostgreSQL and RabbitMQ, and every scheduler reaches
//! PostgreSQL, through its own proxy in the runner (`proxy.rs`), so one process at a time can be cut
//! off — black-holed (sockets open, no bytes move) or reset — while the rest of the cluster runs on:
//!
//! 1. worker ↔ PostgreSQL, while that worker runs long `http` tasks (4 lease TTLs each): its
//!    attempts keep calling the receiver while its leases expire and other workers take the tasks
//!    over. Without a lease deadline in the worker (it stops an attempt whose lease it could not
//!    renew in time) this produces overlapping attempts — the check that fails until that lands;
//! 2. worker ↔ RabbitMQ;
//! 3. scheduler ↔ PostgreSQL, while interval jobs fire.
//!
//! Pass: 0 lost, 0 double-committed, 0 overlapping, every slot fired once; recovery (heal to the
//! first fresh task completed) reported.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
use serde_json::json;

use crate::client::http_task;
use crate::cluster::Role;
use crate::fires;
use crate::probe;
use crate::proxy::{Mode, Proxy};
use crate::rig::{Rig, LEASE_SECONDS};
use crate::scenarios::s3_scheduler_crashes::first;
use crate::store;

#[derive(Debug, Clone, Copy)]
enum Link {
    WorkerPg,
    WorkerAmqp,
    SchedulerPg,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::WorkerPg => "worker↔PostgreSQL",
            Link::WorkerAmqp => "worker↔RabbitMQ",
            Link::SchedulerPg => "scheduler↔PostgreSQL",
        }
    }
}

/// A URL with its port replaced.
fn via(url: &str, port: u16) -> anyhow::Result<String> {
    let mut u = reqwest::Url::parse(url)?;
    u.set_port(Some(port))
        .map_err(|_| anyhow::anyhow!("{url}: cannot set a port"))?;
    Ok(u.to_string())
}

pub async fn run(rig: &mut Rig) -> anyhow::Result<()> {
    let smoke = rig.opts.smoke;
    let rounds = if smoke { 1 } else { 2 };
    let (workers, schedulers) = (4usize, 3usize);
    let long_ms = (4.0 * LEASE_SECONDS * 1e3) as u64;
    let cut = Duration::from_secs_f64(3.0 * LEASE_SECONDS);

    let pg_port = rig.services.pg.port;
    let amqp_port = rig.services.rabbit.port;
    let mut worker_pg = Vec::new();
    let mut worker_amqp = Vec::new();
    let mut sched_pg = Vec::new();
    for _ in 0..workers {
        worker_pg.push(Proxy::start(pg_port).await?);
        worker_amqp.push(Proxy::start(amqp_port).await?);
    }
    for _ in 0..schedulers {
        sched_pg.push(Proxy::start(pg_port).await?);
    }
    let db = rig.iso.database_url.clone();
    let amqp = rig.iso.amqp_url.clone();
    let mut specs = vec![
        rig.spec(Role::Api, 0, &[], &[]),
        rig.spec(Role::Api, 1, &[], &[]),
    ];
    for (i, p) in sched_pg.iter().enumerate() {
        let url = via(&db, p.port)?;
        specs.push(rig.spec(Role::Scheduler, i, &[], &[("IDEM_DATABASE_URL", &url)]));
    }
    for i in 0..workers {
        let (pg, mq) = (
            via(&db, worker_pg[i].port)?,
            via(&amqp, worker_amqp[i].port)?,
        );
        specs.push(rig.spec(
            Role::Worker,
            i,
            &["--worker-concurrency", "8"],
            &[("IDEM_DATABASE_URL", &pg), ("IDEM_BROKER_URL", &mq)],
        ));
    }
    rig.cluster.start_all(specs).await?;
    rig.start_client();
    let client = rig.client().clone();
    let hook = rig.receiver.hook.clone();

    let every: Vec<u64> = (0..20).map(|_| rig.rng.range(1, 3)).collect();
    let start_at =
        Utc::now().duration_trunc(chrono::Duration::seconds(1))? + chrono::Duration::seconds(3);
    let mut jobs = fires::create(&client, &hook, "s6", &every, start_at).await?;

    // Background: short tasks all along.
    let bg = {
        let (client, hook) = (client.clone(), hook.clone());
        let n = if smoke { 400 } else { 1500 };
        let holds: Vec<u64> = (0..n).map(|_| rig.rng.range(20, 300)).collect();
        tokio::spawn(async move {
            let mut handles = Vec::new();
            for (i, hold) in holds.into_iter().enumerate() {
                let key = format!("s6-bg{i}");
                let request = http_task(&hook, &key, hold, json!({}));
                let client = client.clone();
                handles.push(tokio::spawn(async move {
                    client
                        .submit_until_settled(i, &key, &request, Duration::from_secs(90))
                        .await
                }));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for h in handles {
                let _ = h.await;
            }
        })
    };

    let mut recoveries = Vec::new();
    let mut faults = Vec::new();
    let mut notes = Vec::new();
    let mut long_n = 0;
    // Black-hole and reset alternate over the faults (the seed picks which comes first).
    let phase = rig.rng.below(2);
    let links = [Link::WorkerPg, Link::WorkerAmqp, Link::SchedulerPg];
    for round in 0..rounds {
        for (k, link) in links.into_iter().enumerate() {
            let mode = if (round * 3 + k + phase).is_multiple_of(2) {
                Mode::BlackHole
            } else {
                Mode::Reset
            };
            let (proxy, target) = match link {
                Link::WorkerPg => {
                    // Long tasks first, then cut off a worker that is running some of them.
                    let n = workers * 2;
                    let mut ids = Vec::new();
                    for _ in 0..n {
                        let key = format!("s6-long{long_n}");
                        long_n += 1;
                        let op = client
                            .submit_until_settled(
                                long_n,
                                &key,
                                &http_task(&hook, &key, long_ms, json!({})),
                                Duration::from_secs(30),
                            )
                            .await;
                        ids.extend(op.task_id);
                    }
                    let target = pick_holder(rig, &ids, workers)
                        .await
                        .unwrap_or_else(|| rig.rng.below(workers));
                    (&worker_pg[target], format!("worker-{target}"))
                }
                Link::WorkerAmqp => {
                    let w = rig.rng.below(workers);
                    (&worker_amqp[w], format!("worker-{w}"))
                }
                Link::SchedulerPg => {
                    let s = rig.rng.below(schedulers);
                    (&sched_pg[s], format!("scheduler-{s}"))
                }
            };
            println!(
                "  [S6] round {round}: {} of {target}: {} for {:.0} s",
                link.name(),
                mode.as_str(),
                cut.as_secs_f64()
            );
            proxy.set(mode);
            tokio::time::sleep(cut).await;
            proxy.set(Mode::Forward);
            let healed = Instant::now();
            let rec = probe::recovery(
                &client,
                &rig.receiver,
                &format!("s6-r{round}-{}", link as u8),
                healed,
                Duration::from_secs(60),
            )
            .await;
            recoveries.push(rec.unwrap_or(60_000.0));
            faults.push(format!("{} {}", link.name(), mode.as_str()));
            notes.push(json!({"link": link.name(), "mode": mode.as_str(), "target": target, "recovery_ms": rec}));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    bg.await?;
    fires::pause_all(&client, &mut jobs).await?;
    let open = rig.wait_all_final(0, Duration::from_secs(120)).await?;
    let (verdict, tasks, runs) = rig.judge(&HashMap::new(), true).await?;
    let c = fires::check(&jobs, &runs, &tasks);

    rig.report.workload = format!(
        "{long_n} http tasks of {:.0} s (4 lease TTLs), short background tasks, 20 interval jobs",
        long_ms as f64 / 1e3
    );
    rig.report.faults = faults
        .iter()
        .map(|f| format!("{f} {:.0} s", cut.as_secs_f64()))
        .collect();
    let r = &mut rig.report;
    r.recovery(&recoveries);
    r.check("every task final", open == 0, format!("{open} unfinished"));
    r.check(
        "every expected slot fired once",
        c.missing.is_empty() && c.after_pause.is_empty() && c.early.is_empty(),
        format!(
            "{} expected, {} missing {:?}, {} after the pause, {} early",
            c.expected,
            c.missing.len(),
            first(&c.missing),
            c.after_pause.len(),
            c.early.len()
        ),
    );
    r.verdict(&verdict, true);
    let ev = &rig.cluster.events;
    r.extra = json!({
        "partitions": notes,
        "attempts_stopped": ev.stopped.load(std::sync::atomic::Ordering::Relaxed),
        "attempts_stopped_at_lease_deadline": ev.deadline_stops.load(std::sync::atomic::Ordering::Relaxed),
    });
    Ok(())
}

/// The worker (index) holding the most of `ids` right now, once at least one of them runs.
async fn pick_holder(rig: &Rig, ids: &[String], workers: usize) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let mut best: Option<(usize, usize)> = None;
        for w in 0..workers {
            let pid = rig.cluster.get(Role::Worker, w).pid;
            let held = store::running_on(&rig.pool, pid).await.unwrap_or_default();
            let n = held.iter().filter(|(id, _)| ids.contains(id)).count();
            if n > 0 && best.is_none_or(|(_, b)| n > b) {
                best = Some((w, n));
            }
        }
        if let Some((w, _)) = best {
            // Let the attempts reach the receiver before the cut.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Some(w);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
