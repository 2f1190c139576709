//! S5 dependency restarts: a steady stream of keyed `http` tasks while the services themselves go
//! away, in a seeded order: PostgreSQL restarted (`pg_ctl stop -m fast`, then start) and killed
//! (`kill -9` of the postmaster and its backends, then crash recovery), RabbitMQ restarted
//! (`stop_app`/`start_app`) and Redis restarted (`kill -9`; it comes back empty). All three are
//! private instances of this run, so no other test on the machine sees the outages.
//!
//! The client retries with its key on 5xx, refusals and timeouts, as a real client would. Recovery
//! of each fault: from the service accepting connections again until a fresh task submitted after
//! that completes end to end (see `probe.rs`).
//!
//! Pass: every accepted task completes once (0 lost, 0 double-committed, 0 overlapping); recovery
//! reported.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::http_task;
use crate::probe;
use crate::rig::Rig;

#[derive(Debug, Clone, Copy)]
enum Fault {
    PgRestart,
    PgKill,
    RabbitRestart,
    RedisRestart,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::PgRestart => "PostgreSQL restart",
            Fault::PgKill => "PostgreSQL kill -9",
            Fault::RabbitRestart => "RabbitMQ restart",
            Fault::RedisRestart => "Redis kill -9 + restart",
        }
    }
}

pub async fn run(rig: &mut Rig) -> anyhow::Result<()> {
    let smoke = rig.opts.smoke;
    let rounds = if smoke { 1 } else { 3 };
    // A private server: room for bigger pools.
    rig.set_env("IDEM_DATABASE_MAX_CONNECTIONS", "8");
    rig.start_cluster(2, 3, 4, 8).await?;
    let client = rig.client().clone();
    let hook = rig.receiver.hook.clone();

    let mut faults = Vec::new();
    for _ in 0..rounds {
        let mut f = vec![
            Fault::PgRestart,
            Fault::PgKill,
            Fault::RabbitRestart,
            Fault::RedisRestart,
        ];
        rig.rng.shuffle(&mut f);
        faults.extend(f);
    }
    let downs: Vec<f64> = faults.iter().map(|_| 1.0 + rig.rng.unit() * 3.0).collect();

    // The load: 25 submissions a second until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, hook, stop) = (client.clone(), hook.clone(), stop.clone());
        let holds: Vec<u64> = (0..100_000).map(|_| rig.rng.range(20, 200)).collect();
        tokio::spawn(async move {
            let mut handles = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < holds.len() {
                let key = format!("s5-k{i}");
                let request = http_task(&hook, &key, holds[i], json!({}));
                let client = client.clone();
                handles.push(tokio::spawn(async move {
                    client
                        .submit_until_settled(i, &key, &request, Duration::from_secs(90))
                        .await
                }));
                i += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            for h in handles {
                let _ = h.await;
            }
            i
        })
    };

    let mut recoveries = Vec::new();
    let mut notes = Vec::new();
    tokio::time::sleep(Duration::from_secs(if smoke { 1 } else { 3 })).await;
    for (n, (fault, down)) in faults.iter().zip(&downs).enumerate() {
        let private = rig
            .services
            .private
            .as_mut()
            .expect("S5 runs on private services");
        let t = Instant::now();
        match fault {
            Fault::PgRestart => {
                let pg = private.pg.as_mut().expect("private PostgreSQL");
                pg.down().await?;
                tokio::time::sleep(Duration::from_secs_f64(*down)).await;
                pg.up().await?;
            }
            Fault::PgKill => {
                let pg = private.pg.as_mut().expect("private PostgreSQL");
                pg.kill9().await?;
                tokio::time::sleep(Duration::from_secs_f64(*down)).await;
                pg.up().await?;
            }
            Fault::RabbitRestart => {
                let rabbit = rig.services.rabbit.clone();
                rabbit.ctl(&["stop_app"]).await?;
                tokio::time::sleep(Duration::from_secs_f64(*down)).await;
                rabbit.ctl(&["start_app"]).await?;
            }
            Fault::RedisRestart => {
                let redis = private.redis.as_ref().expect("private Redis");
                redis.down().await?;
                tokio::time::sleep(Duration::from_secs_f64(*down)).await;
                redis.up().await?;
            }
        }
        let back = Instant::now();
        let outage = (back - t).as_secs_f64();
        let rec = probe::recovery(
            &client,
            &rig.receiver,
            &format!("s5-f{n}"),
            back,
            Duration::from_secs(90),
        )
        .await;
        println!(
            "  [S5] {} (down {outage:.1} s): recovered {}",
            fault.name(),
            rec.map(|r| format!("{r:.0} ms after it was back"))
                .unwrap_or_else(|| "never (90 s)".into())
        );
        notes.push(json!({"fault": fault.name(), "outage_s": outage, "recovery_ms": rec}));
        match rec {
            Some(r) => recoveries.push(r),
            None => recoveries.push(90_000.0),
        }
        tokio::time::sleep(Duration::from_secs(if smoke { 2 } else { 5 })).await;
    }
    stop.store(true, Ordering::Relaxed);
    let submitted = load.await?;
    let open = rig.wait_all_final(0, Duration::from_secs(120)).await?;
    let (verdict, _, _) = rig.judge(&HashMap::new(), true).await?;

    rig.report.workload =
        format!("{submitted} http tasks of 20–200 ms at 25/s, plus recovery probes");
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for f in &faults {
        *counts.entry(f.name()).or_default() += 1;
    }
    rig.report.faults = counts.iter().map(|(k, v)| format!("{v} × {k}")).collect();
    let r = &mut rig.report;
    r.recovery(&recoveries);
    r.check("every task final", open == 0, format!("{open} unfinished"));
    r.verdict(&verdict, true);
    r.check(
        "recovery reported",
        recoveries.iter().all(|r| *r < 90_000.0),
        format!(
            "max {:.0} ms, p99 {:.0} ms over {} faults",
            r.recovery_max_ms.unwrap_or(0.0),
            r.recovery_p99_ms.unwrap_or(0.0),
            recoveries.len()
        ),
    );
    // The maintenance leader's term is its fencing token: it should only grow. Redis keeps the
    // counter in memory, so a Redis that comes back empty starts the terms again (reported, not
    // failed: see docs/RELIABILITY.md).
    let terms: Vec<u64> = rig
        .cluster
        .events
        .leaders
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, t)| *t)
        .collect();
    let repeated = terms.windows(2).filter(|w| w[1] <= w[0]).count();
    if repeated > 0 {
        println!(
            "  [S5] note: the maintenance leader term went back {repeated} times (terms {terms:?})"
        );
    }
    r.extra = json!({
        "faults": notes,
        "leader_terms": terms,
        "leader_term_repeats": repeated,
        "history": crate::oracle::outcome_counts(&client.history()),
    });
    Ok(())
}
