//! S1 duplicates: many keyed submissions, a fifth of the keys sent five times at once through both
//! api processes, some keys reused with another body afterwards. No faults: this is the baseline
//! that the submission guarantee holds under concurrency alone.
//!
//! Pass: exactly one task per key; every resubmission answered as a replay (200,
//! `Idempotent-Replayed: true`, the same task); every reuse with another body refused with 422; a
//! client key in the scheduler's `job:` namespace refused with 422; no 5xx; and the oracle's
//! 0 lost / 0 double-committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::client::{http_task, Outcome};
use crate::rig::Rig;

pub async fn run(rig: &mut Rig) -> anyhow::Result<()> {
    let smoke = rig.opts.smoke;
    let (keys, dup_keys, copies, conflicts) = if smoke {
        (1_000, 200, 5, 10)
    } else {
        (10_000, 2_000, 5, 100)
    };
    rig.report.workload = format!(
        "{keys} keys; {dup_keys} of them sent {copies}× at once through 2 apis \
         ({} resubmissions); {conflicts} reused with another body",
        dup_keys * (copies - 1)
    );
    rig.report.faults = vec!["none".into()];
    rig.start_cluster(2, 3, 4, 16).await?;
    let hook = rig.receiver.hook.clone();
    let client = rig.client().clone();

    let picked = rig.rng.sample(keys, dup_keys + conflicts);
    let mut n_copies = vec![1usize; keys];
    for &i in &picked[..dup_keys] {
        n_copies[i] = copies;
    }
    let conflict_keys: Vec<usize> = picked[dup_keys..].to_vec();
    let mut order: Vec<usize> = (0..keys).collect();
    rig.rng.shuffle(&mut order);
    let first_api: Vec<usize> = (0..keys).map(|_| rig.rng.below(2)).collect();

    // Phase 1: every key, its copies at once, 48 keys in flight.
    let gate = Arc::new(Semaphore::new(48));
    let mut groups = Vec::new();
    for i in order {
        let (client, hook, gate) = (client.clone(), hook.clone(), gate.clone());
        let (n, api0) = (n_copies[i], first_api[i]);
        groups.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            let key = format!("s1-k{i}");
            let request = http_task(&hook, &key, 0, json!({}));
            let sends = (0..n).map(|c| client.submit(api0 + c, &key, 0, &request));
            join_all(sends).await
        }));
    }
    let mut by_key: HashMap<String, Vec<crate::client::Op>> = HashMap::new();
    for g in groups {
        for op in g.await? {
            by_key.entry(op.key.clone()).or_default().push(op);
        }
    }
    // Phase 2: the same keys with another body (a different hold: another fingerprint).
    let mut refused = 0;
    let mut conflict_problems = Vec::new();
    for i in &conflict_keys {
        let key = format!("s1-k{i}");
        let request = http_task(&hook, &key, 1, json!({}));
        let op = client.submit(rig.rng.below(2), &key, 1, &request).await;
        if op.outcome == Outcome::Conflict {
            refused += 1;
        } else {
            conflict_problems.push(format!("{key}: {:?} {:?}", op.status, op.error));
        }
    }

    // A client key in the scheduler's namespace would take a fire's slot: it must be refused.
    let fire_key = "job:s1-nojob:2030-01-01T00:00:00.000Z";
    let stolen = client
        .submit(0, fire_key, 0, &http_task(&hook, fire_key, 0, json!({})))
        .await;

    let open = rig
        .wait_all_final(keys, Duration::from_secs(if smoke { 60 } else { 240 }))
        .await?;

    // Every key: one 202, the rest 200 replays of the same task.
    let mut not_replays = Vec::new();
    let mut server_errors = 0;
    let mut unknown = 0;
    for (key, ops) in &by_key {
        let created = ops.iter().filter(|o| o.outcome == Outcome::Created).count();
        let replays = ops
            .iter()
            .filter(|o| o.outcome == Outcome::Replayed && o.replayed_header)
            .count();
        let ids: std::collections::BTreeSet<_> =
            ops.iter().filter_map(|o| o.task_id.clone()).collect();
        if created != 1 || replays != ops.len() - 1 || ids.len() != 1 {
            not_replays.push(format!(
                "{key}: {created} created, {replays} replays of {} ({:?})",
                ops.len(),
                ops.iter().map(|o| o.status).collect::<Vec<_>>()
            ));
        }
    }
    for op in client.history() {
        match op.outcome {
            Outcome::ServerError => server_errors += 1,
            Outcome::Unknown | Outcome::Refused => unknown += 1,
            _ => {}
        }
    }
    let (verdict, tasks, _) = rig.judge(&HashMap::new(), true).await?;
    let resubmissions: usize = by_key.values().map(|o| o.len() - 1).sum();
    let r = &mut rig.report;
    r.check(
        "exactly one task per key",
        tasks.len() == keys,
        format!("{} tasks for {keys} keys", tasks.len()),
    );
    r.check(
        "every resubmission a replay",
        not_replays.is_empty(),
        if not_replays.is_empty() {
            format!(
                "{resubmissions} resubmissions, all 200 + Idempotent-Replayed of the first task"
            )
        } else {
            format!(
                "{} keys wrong, first: {:?}",
                not_replays.len(),
                &not_replays[..not_replays.len().min(3)]
            )
        },
    );
    r.check(
        &format!("{conflicts} × 422 for another body"),
        refused == conflicts,
        format!("{refused} × 422; others: {conflict_problems:?}"),
    );
    r.check(
        "0 × 5xx",
        server_errors == 0 && unknown == 0,
        format!("{server_errors} × 5xx, {unknown} without an answer"),
    );
    r.check(
        "a fire key (job:…) from a client is refused",
        stolen.outcome == Outcome::Conflict || stolen.status == Some(422),
        format!("{:?} {:?}", stolen.status, stolen.error),
    );
    r.check("every task final", open == 0, format!("{open} unfinished"));
    r.verdict(&verdict, true);
    r.extra = json!({"history": crate::oracle::outcome_counts(&client.history())});
    Ok(())
}
