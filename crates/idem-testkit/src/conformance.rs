//! The store conformance suite: the guarantees of the README as tests, written against the `Store` trait
//! only. Each case takes a fresh, empty store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use idem_core::store::{Cas, ClaimRequest, JobFilter, Lease, PageRequest, TaskFilter};
use idem_core::task::Idempotency;
use idem_core::{
    ErrorInfo, Finish, FireOutcome, IdempotencyKey, JobId, JobState, QueueName, Store, StoreError,
    Submitted, TaskState, Trigger, WorkerId, WorkerInfo,
};
use serde_json::json;

use crate::fixtures::{interval_job, keyed, secs, t0, task};

type S = Arc<dyn Store>;

fn req(worker: &str, queues: &[&str], limit: u32, now: DateTime<Utc>) -> ClaimRequest {
    ClaimRequest {
        worker: WorkerId(worker.to_owned()),
        queues: queues
            .iter()
            .map(|q| QueueName::try_from(*q).unwrap())
            .collect(),
        limit,
        now,
        lease_until: now + secs(30.0),
    }
}

fn lease_of(t: &idem_core::Task) -> Lease {
    Lease {
        task_id: t.id,
        attempt: t.attempts,
    }
}

pub async fn submit_creates_a_queued_task(store: S) {
    let now = t0();
    let out = store.submit(vec![task(now)], now).await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(!out[0].replayed);
    let got = store.get_task(out[0].task.id).await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::Queued);
    assert_eq!(got.attempts, 0);
    assert_eq!(got, out[0].task);
}

pub async fn concurrent_submits_with_one_key_make_one_task(store: S) {
    let now = t0();
    let mut handles = Vec::new();
    for _ in 0..64 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .submit(vec![keyed(task(now), "order-42", 3600.0)], now)
                .await
                .unwrap()
                .remove(0)
        }));
    }
    let results: Vec<_> = futures::future::join_all(handles)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ids: std::collections::HashSet<_> = results.iter().map(|s| s.task.id).collect();
    assert_eq!(ids.len(), 1, "one task for one key");
    assert_eq!(results.iter().filter(|s| !s.replayed).count(), 1);
    let page = store
        .list_tasks(
            &TaskFilter::default(),
            &PageRequest {
                limit: 1000,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

pub async fn a_key_reused_with_another_request_is_refused(store: S) {
    let now = t0();
    store
        .submit(vec![keyed(task(now), "k", 3600.0)], now)
        .await
        .unwrap();
    let mut other = task(now);
    other.args = json!({"different": true});
    let err = store
        .submit(vec![keyed(other, "k", 3600.0)], now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::KeyConflict { index: 0, .. }),
        "{err:?}"
    );
}

pub async fn a_key_is_free_again_after_its_ttl(store: S) {
    let now = t0();
    let first = store
        .submit(vec![keyed(task(now), "ttl", 10.0)], now)
        .await
        .unwrap();
    let replay = store
        .submit(vec![keyed(task(now), "ttl", 10.0)], now + secs(9.0))
        .await
        .unwrap();
    assert!(replay[0].replayed);
    assert_eq!(replay[0].task.id, first[0].task.id);
    let later = now + secs(11.0);
    let mut other = task(later);
    other.args = json!({"new": 1});
    let again = store
        .submit(vec![keyed(other, "ttl", 10.0)], later)
        .await
        .unwrap();
    assert!(!again[0].replayed);
    assert_ne!(again[0].task.id, first[0].task.id);
}

pub async fn a_batch_keeps_order_and_a_conflict_rolls_it_back(store: S) {
    let now = t0();
    let batch: Vec<_> = (0..5)
        .map(|i| {
            let mut t = task(now);
            t.args = json!({ "i": i });
            t
        })
        .collect();
    let ids: Vec<_> = batch.iter().map(|t| t.id).collect();
    let out = store.submit(batch, now).await.unwrap();
    assert_eq!(out.iter().map(|s| s.task.id).collect::<Vec<_>>(), ids);

    store
        .submit(vec![keyed(task(now), "dup", 3600.0)], now)
        .await
        .unwrap();
    let mut conflicting = task(now);
    conflicting.args = json!({"x": 1});
    let fresh = task(now);
    let fresh_id = fresh.id;
    let err = store
        .submit(vec![fresh, keyed(conflicting, "dup", 3600.0)], now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::KeyConflict { index: 1, .. }),
        "{err:?}"
    );
    assert!(
        store.get_task(fresh_id).await.unwrap().is_none(),
        "rolled back"
    );
}

pub async fn a_batch_mixing_keyless_and_keyed_items_keeps_order_and_replays_a_repeated_key(
    store: S,
) {
    let now = t0();
    // A keyless item with every optional column set, one scheduled for later, and a key repeated
    // later in the same batch (with the same request: a replay of the earlier item's task).
    let mut full = task(now);
    full.queue = QueueName::try_from("other").unwrap();
    full.priority = -3;
    full.max_retries = 7;
    full.timeout_seconds = 1.5;
    full.expires_at = Some(now + secs(600.0));
    full.job_id = Some(JobId::try_from("j1").unwrap());
    full.args = json!({"full": [1, "two", null]});
    let later = task(now + secs(60.0));
    let first_k1 = keyed(task(now), "mix-k1", 3600.0);
    let repeat_k1 = keyed(task(now), "mix-k1", 3600.0);
    let k2 = keyed(task(now), "mix-k2", 3600.0);
    let (a, b, c) = (task(now), task(now), task(now));
    let batch = vec![
        a.clone(),
        first_k1.clone(),
        full.clone(),
        later.clone(),
        repeat_k1,
        b.clone(),
        k2.clone(),
        c.clone(),
    ];
    let out = store.submit(batch, now).await.unwrap();
    let ids: Vec<_> = out.iter().map(|s| s.task.id).collect();
    assert_eq!(
        ids,
        [
            a.id,
            first_k1.id,
            full.id,
            later.id,
            first_k1.id,
            b.id,
            k2.id,
            c.id
        ]
    );
    let replayed: Vec<_> = out.iter().map(|s| s.replayed).collect();
    assert_eq!(
        replayed,
        [false, false, false, false, true, false, false, false]
    );
    for s in &out {
        assert_eq!(
            store.get_task(s.task.id).await.unwrap().as_ref(),
            Some(&s.task)
        );
    }
    let got = &out[2].task;
    assert_eq!(got.state, TaskState::Queued);
    assert_eq!(
        (
            &got.queue,
            got.priority,
            got.max_retries,
            got.timeout_seconds
        ),
        (&full.queue, -3, 7, 1.5)
    );
    assert_eq!(
        (got.expires_at, &got.job_id),
        (full.expires_at, &full.job_id)
    );
    assert_eq!(
        (&got.args, got.scheduled_at, got.created_at),
        (&full.args, now, now)
    );
    assert_eq!(got.idempotency_key, None);
    assert_eq!(out[3].task.state, TaskState::Scheduled);
    assert_eq!(out[3].task.scheduled_at, now + secs(60.0));
    assert_eq!(
        out[1].task.idempotency_key.as_ref().map(|k| k.as_str()),
        Some("mix-k1")
    );
    let page = store
        .list_tasks(
            &TaskFilter::default(),
            &PageRequest {
                limit: 1000,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 7, "the repeated key made no second task");

    // A conflict after keyless runs fails the batch at its index and rolls the runs back.
    let (d, e) = (task(now), task(now));
    let mut conflicting = task(now);
    conflicting.args = json!({"other": true});
    let err = store
        .submit(
            vec![
                d.clone(),
                e.clone(),
                keyed(conflicting, "mix-k2", 3600.0),
                task(now),
            ],
            now,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::KeyConflict { index: 2, .. }),
        "{err:?}"
    );
    for id in [d.id, e.id] {
        assert!(store.get_task(id).await.unwrap().is_none(), "rolled back");
    }
}

pub async fn a_task_with_an_eta_waits_for_it(store: S) {
    let now = t0();
    let out = store
        .submit(vec![task(now + secs(60.0))], now)
        .await
        .unwrap();
    assert_eq!(out[0].task.state, TaskState::Scheduled);
    assert!(store
        .claim(&req("w", &["default"], 10, now))
        .await
        .unwrap()
        .is_empty());
    let q = [QueueName::default_queue()];
    assert_eq!(
        store.next_ready_at(&q).await.unwrap(),
        Some(now + secs(60.0))
    );
    let later = now + secs(60.0);
    let claims = store
        .claim(&req("w", &["default"], 10, later))
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].task.attempts, 1);
    assert_eq!(claims[0].task.state, TaskState::Running);
}

pub async fn claims_take_higher_priority_first_and_only_their_queues(store: S) {
    let now = t0();
    let mut low = task(now);
    low.priority = 1;
    let mut high = task(now);
    high.priority = 9;
    let mut other = task(now);
    other.queue = QueueName::try_from("other").unwrap();
    let (low_id, high_id, other_id) = (low.id, high.id, other.id);
    store.submit(vec![low, high, other], now).await.unwrap();
    let first = store.claim(&req("w", &["default"], 1, now)).await.unwrap();
    assert_eq!(first[0].task.id, high_id);
    let second = store.claim(&req("w", &["default"], 10, now)).await.unwrap();
    assert_eq!(
        second.iter().map(|c| c.task.id).collect::<Vec<_>>(),
        vec![low_id]
    );
    let third = store.claim(&req("w", &["other"], 10, now)).await.unwrap();
    assert_eq!(third[0].task.id, other_id);
}

pub async fn concurrent_claims_lease_each_task_once(store: S) {
    let now = t0();
    let batch: Vec<_> = (0..200).map(|_| task(now)).collect();
    store.submit(batch, now).await.unwrap();
    let mut handles = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let c = store
                    .claim(&req(&format!("w{w}"), &["default"], 7, now))
                    .await
                    .unwrap();
                if c.is_empty() {
                    return mine;
                }
                mine.extend(c.into_iter().map(|c| c.task.id));
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200);
    assert_eq!(unique.len(), 200);
}

pub async fn a_finish_from_a_superseded_attempt_is_rejected(store: S) {
    let now = t0();
    store.submit(vec![task(now)], now).await.unwrap();
    let first = store
        .claim(&req("a", &["default"], 1, now))
        .await
        .unwrap()
        .remove(0);
    // Worker a goes silent; its lease expires and the task is reaped and claimed again.
    let later = now + secs(31.0);
    assert_eq!(store.reap_leases(later).await.unwrap().len(), 1);
    let second = store
        .claim(&req("b", &["default"], 1, later))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.task.attempts, 2);
    let stale = store
        .finish(
            lease_of(&first.task),
            Finish::Succeeded(json!("late")),
            later,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale, StoreError::Fenced { attempt: 1, .. }),
        "{stale:?}"
    );
    let done = store
        .finish(
            lease_of(&second.task),
            Finish::Succeeded(json!("ok")),
            later,
        )
        .await
        .unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.result, Some(json!("ok")));
    // A second finish of the same attempt is refused too: completion is recorded once.
    let again = store
        .finish(
            lease_of(&second.task),
            Finish::Succeeded(json!("twice")),
            later,
        )
        .await
        .unwrap_err();
    assert!(matches!(again, StoreError::Fenced { .. }));
    let got = store.get_task(second.task.id).await.unwrap().unwrap();
    assert_eq!(got.result, Some(json!("ok")));
}

pub async fn finish_many_fences_each_item_on_its_own(store: S) {
    let now = t0();
    store
        .submit((0..5).map(|_| task(now)).collect(), now)
        .await
        .unwrap();
    let claims = store.claim(&req("a", &["default"], 5, now)).await.unwrap();
    let l: Vec<_> = claims.iter().map(|c| lease_of(&c.task)).collect();
    // l[2]'s task is cancelled (its attempt fenced); l[3] names an attempt the task never ran.
    store.cancel_task(l[2].task_id, now).await.unwrap();
    let never_ran = Lease {
        attempt: l[3].attempt + 1,
        ..l[3]
    };
    let missing = Lease {
        task_id: idem_core::TaskId::generate(),
        attempt: 1,
    };
    let at = now + secs(5.0);
    let out = store
        .finish_many(
            vec![
                (l[0], Finish::Succeeded(json!({"n": 0}))),
                (missing, Finish::Succeeded(json!("nobody"))),
                (l[2], Finish::Succeeded(json!("late"))),
                (
                    l[1],
                    Finish::Retry {
                        at,
                        error: ErrorInfo::new("error", "again"),
                    },
                ),
                (never_ran, Finish::Succeeded(json!("wrong attempt"))),
                (l[4], Finish::Failed(ErrorInfo::new("bad_input", "no"))),
            ],
            now,
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 6, "one answer per item");
    let ok = |i: usize| {
        out[i]
            .as_ref()
            .unwrap_or_else(|e| panic!("item {i}: {e:?}"))
    };
    assert_eq!(
        (ok(0).id, ok(0).state),
        (l[0].task_id, TaskState::Succeeded)
    );
    assert_eq!(ok(0).result, Some(json!({"n": 0})));
    assert_eq!(ok(0).finished_at, Some(now));
    assert!(
        matches!(out[1], Err(StoreError::TaskNotFound(id)) if id == missing.task_id),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(out[2], Err(StoreError::Fenced { task_id, attempt })
            if task_id == l[2].task_id && attempt == l[2].attempt),
        "{:?}",
        out[2]
    );
    assert_eq!((ok(3).id, ok(3).state), (l[1].task_id, TaskState::Retrying));
    assert_eq!(ok(3).error, Some(ErrorInfo::new("error", "again")));
    assert_eq!(ok(3).finished_at, None);
    assert!(
        matches!(out[4], Err(StoreError::Fenced { attempt, .. }) if attempt == never_ran.attempt),
        "{:?}",
        out[4]
    );
    assert_eq!((ok(5).id, ok(5).state), (l[4].task_id, TaskState::Failed));
    assert_eq!(ok(5).error, Some(ErrorInfo::new("bad_input", "no")));
    // What was answered is what was stored; refused items changed nothing.
    for i in [0, 3, 5] {
        assert_eq!(
            store.get_task(ok(i).id).await.unwrap().as_ref(),
            Some(ok(i))
        );
    }
    let cancelled = store.get_task(l[2].task_id).await.unwrap().unwrap();
    assert_eq!(
        (cancelled.state, cancelled.result),
        (TaskState::Cancelled, None)
    );
    let running = store.get_task(l[3].task_id).await.unwrap().unwrap();
    assert_eq!(running.state, TaskState::Running);
    // The retry waits for its time and then runs as the next attempt.
    assert!(store
        .claim(&req("a", &["default"], 5, at - secs(1.0)))
        .await
        .unwrap()
        .is_empty());
    let again = store.claim(&req("a", &["default"], 5, at)).await.unwrap();
    assert_eq!(
        again
            .iter()
            .map(|c| (c.task.id, c.task.attempts))
            .collect::<Vec<_>>(),
        [(l[1].task_id, l[1].attempt + 1)]
    );

    // The same attempt twice in one group: the first outcome wins, the second is fenced, as if
    // they had been finished one after the other.
    let twice = lease_of(&again[0].task);
    let out = store
        .finish_many(
            vec![
                (twice, Finish::Succeeded(json!("first"))),
                (l[3], Finish::Succeeded(json!("other"))),
                (twice, Finish::Succeeded(json!("second"))),
            ],
            now,
        )
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap().result, Some(json!("first")));
    assert_eq!(out[1].as_ref().unwrap().result, Some(json!("other")));
    assert!(
        matches!(out[2], Err(StoreError::Fenced { .. })),
        "{:?}",
        out[2]
    );
    let got = store.get_task(twice.task_id).await.unwrap().unwrap();
    assert_eq!(got.result, Some(json!("first")));

    assert!(store.finish_many(Vec::new(), now).await.unwrap().is_empty());
}

pub async fn a_reaped_lease_returns_the_task_exactly_once(store: S) {
    let now = t0();
    store.submit(vec![task(now)], now).await.unwrap();
    let claim = store
        .claim(&req("a", &["default"], 1, now))
        .await
        .unwrap()
        .remove(0);
    let before = now + secs(29.0);
    assert!(
        store.reap_leases(before).await.unwrap().is_empty(),
        "lease still live"
    );
    let later = now + secs(31.0);
    let reapers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.reap_leases(later).await.unwrap() })
        })
        .collect();
    let mut reaped = Vec::new();
    for r in reapers {
        reaped.extend(r.await.unwrap());
    }
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].task_id, claim.task.id);
    assert_eq!(reaped[0].state, TaskState::Queued);
    let t = store.get_task(claim.task.id).await.unwrap().unwrap();
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.error.unwrap().kind, "lease_expired");
}

pub async fn a_reaped_task_without_retries_left_fails(store: S) {
    let now = t0();
    let mut t = task(now);
    t.max_retries = 0;
    store.submit(vec![t], now).await.unwrap();
    store.claim(&req("a", &["default"], 1, now)).await.unwrap();
    let reaped = store.reap_leases(now + secs(31.0)).await.unwrap();
    assert_eq!(reaped[0].state, TaskState::Failed);
}

pub async fn a_retry_waits_for_its_backoff(store: S) {
    let now = t0();
    store.submit(vec![task(now)], now).await.unwrap();
    let c = store
        .claim(&req("a", &["default"], 1, now))
        .await
        .unwrap()
        .remove(0);
    let at = now + secs(2.0);
    let t = store
        .finish(
            lease_of(&c.task),
            Finish::Retry {
                at,
                error: ErrorInfo::new("error", "boom"),
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Retrying);
    assert_eq!(t.error.as_ref().unwrap().message, "boom");
    assert!(store
        .claim(&req("a", &["default"], 1, now + secs(1.0)))
        .await
        .unwrap()
        .is_empty());
    let again = store.claim(&req("a", &["default"], 1, at)).await.unwrap();
    assert_eq!(again[0].task.attempts, 2);
}

pub async fn cancel_stops_queued_and_fences_running_tasks(store: S) {
    let now = t0();
    let out = store
        .submit(vec![task(now), task(now + secs(100.0))], now)
        .await
        .unwrap();
    let scheduled = store
        .cancel_task(out[1].task.id, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(scheduled.state, TaskState::Cancelled);
    let c = store
        .claim(&req("a", &["default"], 1, now))
        .await
        .unwrap()
        .remove(0);
    let cancelled = store.cancel_task(c.task.id, now).await.unwrap().unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    let late = store
        .finish(lease_of(&c.task), Finish::Succeeded(json!(1)), now)
        .await
        .unwrap_err();
    assert!(matches!(late, StoreError::Fenced { .. }));
    // Cancelling a final task changes nothing.
    let again = store.cancel_task(c.task.id, now).await.unwrap().unwrap();
    assert_eq!(again.state, TaskState::Cancelled);
    let unknown = store
        .cancel_task(idem_core::TaskId::generate(), now)
        .await
        .unwrap();
    assert!(unknown.is_none());
}

pub async fn tasks_not_started_by_expiry_expire(store: S) {
    let now = t0();
    let mut t = task(now);
    t.expires_at = Some(now + secs(5.0));
    let id = t.id;
    store.submit(vec![t], now).await.unwrap();
    assert!(store
        .claim(&req("a", &["default"], 1, now + secs(6.0)))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.expire_tasks(now + secs(6.0)).await.unwrap(), 1);
    assert_eq!(
        store.get_task(id).await.unwrap().unwrap().state,
        TaskState::Expired
    );
}

pub async fn renewal_reports_lost_leases(store: S) {
    let now = t0();
    store.submit(vec![task(now), task(now)], now).await.unwrap();
    let claims = store.claim(&req("a", &["default"], 2, now)).await.unwrap();
    let leases: Vec<_> = claims.iter().map(|c| lease_of(&c.task)).collect();
    store.cancel_task(claims[1].task.id, now).await.unwrap();
    let w = WorkerId("a".into());
    let lost = store
        .renew_leases(&w, &leases, now + secs(60.0))
        .await
        .unwrap();
    assert_eq!(lost, vec![leases[1]]);
    // The renewed lease outlives the original one.
    assert!(store
        .reap_leases(now + secs(45.0))
        .await
        .unwrap()
        .is_empty());
}

pub async fn release_hands_a_task_back(store: S) {
    let now = t0();
    store.submit(vec![task(now)], now).await.unwrap();
    let c = store
        .claim(&req("a", &["default"], 1, now))
        .await
        .unwrap()
        .remove(0);
    store.release(lease_of(&c.task), now).await.unwrap();
    let again = store
        .claim(&req("b", &["default"], 1, now))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(again.task.id, c.task.id);
    assert_eq!(again.task.attempts, 2, "the fencing token is never reused");
}

pub async fn jobs_are_created_listed_updated_and_deleted(store: S) {
    let now = t0();
    for id in ["a", "b", "c"] {
        store
            .create_job(interval_job(id, 10.0, now), false)
            .await
            .unwrap();
    }
    let dup = store
        .create_job(interval_job("a", 10.0, now), false)
        .await
        .unwrap_err();
    assert!(matches!(dup, StoreError::JobExists(_)));
    let mut replaced = interval_job("a", 20.0, now);
    replaced.spec.name = Some("replaced".into());
    let got = store.create_job(replaced, true).await.unwrap();
    assert_eq!(got.spec.name.as_deref(), Some("replaced"));

    let p1 = store
        .list_jobs(
            &JobFilter::default(),
            &PageRequest {
                limit: 2,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(p1.items.len(), 2);
    let p2 = store
        .list_jobs(
            &JobFilter::default(),
            &PageRequest {
                limit: 2,
                after: p1.next_cursor.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(p2.items.len(), 1);
    assert!(p2.next_cursor.is_none());
    let ids: Vec<_> = p1
        .items
        .iter()
        .chain(&p2.items)
        .map(|j| j.spec.id.to_string())
        .collect();
    assert_eq!(ids, vec!["a", "b", "c"]);

    let id = JobId::try_from("b").unwrap();
    let mut b = store.get_job(&id).await.unwrap().unwrap();
    b.state = JobState::Paused;
    let read = b.version;
    let Cas::Done(updated) = store.update_job(b, read).await.unwrap() else {
        panic!("the update applies to the version read")
    };
    assert_eq!(updated.state, JobState::Paused);
    let paused = store
        .list_jobs(
            &JobFilter {
                state: Some(JobState::Paused),
                task: None,
            },
            &PageRequest {
                limit: 10,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(paused.items.len(), 1);
    assert_eq!(store.delete_job(&id, None).await.unwrap(), Cas::Done(()));
    assert_eq!(store.delete_job(&id, None).await.unwrap(), Cas::NotFound);
    assert!(store.get_job(&id).await.unwrap().is_none());
}

pub async fn two_schedulers_fire_each_slot_once(store: S) {
    let start = t0();
    for i in 0..10 {
        store
            .create_job(interval_job(&format!("j{i}"), 1.0, start), false)
            .await
            .unwrap();
    }
    // Two schedulers race over the same 20 simulated seconds, 50 ms apart.
    let mut handles = Vec::new();
    for _ in 0..2 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for step in 0..=400 {
                let now = start + chrono::Duration::milliseconds(step * 50);
                store.fire_due(now, 256).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let mut per_job: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    let mut after = None;
    loop {
        let page = store
            .list_tasks(&TaskFilter::default(), &PageRequest { limit: 500, after })
            .await
            .unwrap();
        for t in &page.items {
            per_job
                .entry(t.job_id.clone().unwrap().to_string())
                .or_default()
                .push(t.scheduled_at);
        }
        after = page.next_cursor;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(per_job.len(), 10);
    for (job, mut slots) in per_job {
        slots.sort();
        let n = slots.len();
        slots.dedup();
        assert_eq!(slots.len(), n, "{job}: a slot fired twice");
        assert_eq!(n, 21, "{job}: slots 0..=20 s each fire once");
        let runs = store
            .job_runs(&JobId::try_from(job.as_str()).unwrap(), 100)
            .await
            .unwrap();
        assert_eq!(runs.len(), 21);
        assert!(runs
            .iter()
            .all(|r| r.outcome == FireOutcome::Fired && r.task_id.is_some()));
    }
}

pub async fn fires_record_missed_and_skipped_overlap(store: S) {
    let start = t0();
    let mut late = interval_job("late", 10.0, start);
    late.spec.misfire_grace_seconds = 1.0;
    let mut overlap = interval_job("overlap", 10.0, start);
    overlap.spec.max_instances = 1;
    store.create_job(late, false).await.unwrap();
    store.create_job(overlap, false).await.unwrap();

    let fires = store.fire_due(start + secs(5.0), 10).await.unwrap().fires;
    let by_job: HashMap<_, _> = fires
        .iter()
        .map(|f| (f.job_id.to_string(), f.outcome))
        .collect();
    assert_eq!(by_job["late"], FireOutcome::Missed);
    assert_eq!(by_job["overlap"], FireOutcome::Fired);
    // The overlap job's first task is still queued at its next slot.
    let fires = store.fire_due(start + secs(10.0), 10).await.unwrap().fires;
    let by_job: HashMap<_, _> = fires
        .iter()
        .map(|f| (f.job_id.to_string(), f.outcome))
        .collect();
    assert_eq!(by_job["overlap"], FireOutcome::SkippedOverlap);
    assert_eq!(by_job["late"], FireOutcome::Fired);
    let runs = store
        .job_runs(&JobId::try_from("overlap").unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(
        runs.iter().map(|r| r.outcome).collect::<Vec<_>>(),
        vec![FireOutcome::SkippedOverlap, FireOutcome::Fired],
        "newest first"
    );
    let job = store
        .get_job(&JobId::try_from("overlap").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.next_run_at, Some(start + secs(20.0)));
    assert_eq!(job.last_run_at, Some(start));
}

pub async fn a_fire_whose_key_is_taken_is_recorded_and_the_other_jobs_fire(store: S) {
    let start = t0();
    store
        .create_job(interval_job("taken", 10.0, start), false)
        .await
        .unwrap();
    store
        .create_job(interval_job("free", 10.0, start), false)
        .await
        .unwrap();
    // A task that took the first slot's key with another request (a client before the namespace was
    // reserved; the API refuses such keys now, the store does not).
    let key = IdempotencyKey::for_fire(&JobId::try_from("taken").unwrap(), start);
    let mut squatter = task(start);
    squatter.idempotency = Some(Idempotency {
        key,
        fingerprint: "another request".into(),
        ttl_seconds: 3600.0,
    });
    store.submit(vec![squatter], start).await.unwrap();

    let pass = store.fire_due(start + secs(1.0), 10).await.unwrap();
    let by_job: HashMap<_, _> = pass
        .fires
        .iter()
        .map(|f| (f.job_id.to_string(), (f.outcome, f.task_id)))
        .collect();
    assert_eq!(by_job["taken"], (FireOutcome::KeyConflict, None));
    assert_eq!(by_job["free"].0, FireOutcome::Fired);
    let runs = store
        .job_runs(&JobId::try_from("taken").unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(runs.len(), 1, "the slot has its history row");
    assert_eq!(runs[0].outcome, FireOutcome::KeyConflict);
    // The job moved on and fires its next slot.
    let pass = store.fire_due(start + secs(10.0), 10).await.unwrap();
    assert!(pass
        .fires
        .iter()
        .any(|f| f.job_id.as_str() == "taken" && f.outcome == FireOutcome::Fired));
}

pub async fn a_fire_whose_key_holds_its_own_request_replays_that_task(store: S) {
    let start = t0();
    store
        .create_job(interval_job("replayed", 10.0, start), false)
        .await
        .unwrap();
    // The slot's task exists but its history row does not (a fire whose history was pruned while
    // its key lived on): the fire replays that task instead of making a second one.
    let earlier = store
        .get_job(&JobId::try_from("replayed").unwrap())
        .await
        .unwrap()
        .unwrap()
        .fire_task(start, start);
    let earlier_id = earlier.id;
    store.submit(vec![earlier], start).await.unwrap();

    let pass = store.fire_due(start + secs(1.0), 10).await.unwrap();
    assert_eq!(pass.fires.len(), 1, "{pass:?}");
    assert_eq!(pass.fires[0].outcome, FireOutcome::Fired);
    assert_eq!(pass.fires[0].task_id, Some(earlier_id));
    let runs = store
        .job_runs(&JobId::try_from("replayed").unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].task_id,
        Some(earlier_id),
        "the history names the replayed task"
    );
    let tasks = store
        .list_tasks(
            &TaskFilter::default(),
            &PageRequest {
                limit: 10,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(tasks.items.len(), 1, "no second task for the slot");
    let job = store
        .get_job(&JobId::try_from("replayed").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.last_run_at, Some(start));
    assert_eq!(job.next_run_at, Some(start + secs(10.0)));
}

pub async fn a_slot_finer_than_the_store_keeps_fires_once(store: S) {
    // A start with nanoseconds: the store keeps a coarser time, and the guard must still know the
    // slot it inserted (else the slot is recorded with no task made for it).
    let start = t0() + chrono::Duration::nanoseconds(1_234_567);
    store
        .create_job(interval_job("fine-grained", 10.0, start), false)
        .await
        .unwrap();
    let pass = store.fire_due(start + secs(1.0), 10).await.unwrap();
    assert_eq!(pass.fires.len(), 1, "{pass:?}");
    assert_eq!(pass.fires[0].outcome, FireOutcome::Fired);
    let task = pass.fires[0].task_id.expect("the fire names its task");
    assert!(
        store.get_task(task).await.unwrap().is_some(),
        "the task was made"
    );
    let pass = store.fire_due(start + secs(2.0), 10).await.unwrap();
    assert!(pass.fires.is_empty(), "the slot fires once: {pass:?}");
}

pub async fn slots_closer_than_their_keys_share_one_task(store: S) {
    // Slots 0.5 ms apart: a fire's key names its slot to the millisecond, so two slots share a
    // key, and the later replays the earlier's task instead of failing the pass.
    let start = t0();
    store
        .create_job(interval_job("sub-ms", 0.0005, start), false)
        .await
        .unwrap();
    let pass = store
        .fire_due(start + chrono::Duration::microseconds(1_600), 10)
        .await
        .unwrap();
    // How many slots are rows depends on the store's time precision (SQLite keeps milliseconds);
    // one task per key holds on every store.
    assert!(pass.fires.len() >= 2, "{pass:?}");
    assert!(pass.fires.iter().all(|f| f.outcome == FireOutcome::Fired));
    let keys: HashSet<_> = pass
        .fires
        .iter()
        .map(|f| IdempotencyKey::for_fire(&f.job_id, f.scheduled_at))
        .collect();
    let tasks: HashSet<_> = pass.fires.iter().map(|f| f.task_id.unwrap()).collect();
    assert_eq!(tasks.len(), keys.len(), "one task per key: {pass:?}");
    for t in tasks {
        assert!(store.get_task(t).await.unwrap().is_some());
    }
}

pub async fn a_pass_fires_a_full_batch_with_catch_up_slots_and_the_rest_next(store: S) {
    let start = t0();
    // 300 jobs, each three slots behind (no coalescing): a 256-job call fires 768 slots and leaves
    // 44 jobs for the next call.
    for i in 0..300 {
        store
            .create_job(interval_job(&format!("j{i:03}"), 1.0, start), false)
            .await
            .unwrap();
    }
    let now = start + secs(2.5);
    let first = store.fire_due(now, 256).await.unwrap();
    assert_eq!(first.jobs, 256);
    assert_eq!(first.fires.len(), 256 * 3);
    let second = store.fire_due(now, 256).await.unwrap();
    assert_eq!(second.jobs, 44);
    assert_eq!(second.fires.len(), 44 * 3);
    assert_eq!(store.fire_due(now, 256).await.unwrap().jobs, 0);
    let mut task_ids = HashSet::new();
    for f in first.fires.iter().chain(&second.fires) {
        assert_eq!(f.outcome, FireOutcome::Fired);
        assert!(task_ids.insert(f.task_id.unwrap()), "one task per slot");
    }
    for i in [0, 255, 256, 299] {
        let id = JobId::try_from(format!("j{i:03}")).unwrap();
        let job = store.get_job(&id).await.unwrap().unwrap();
        assert_eq!(job.last_run_at, Some(start + secs(2.0)), "{id}");
        assert_eq!(job.next_run_at, Some(start + secs(3.0)), "{id}");
        assert_eq!(job.version, 2, "{id}: one write per pass");
        let runs = store.job_runs(&id, 10).await.unwrap();
        assert_eq!(runs.len(), 3, "{id}");
        for r in &runs {
            let task = store.get_task(r.task_id.unwrap()).await.unwrap().unwrap();
            assert_eq!(
                task.scheduled_at, r.scheduled_at,
                "{id}: the row names its own task"
            );
            assert_eq!(task.job_id.as_ref(), Some(&id));
        }
    }
}

pub async fn a_job_with_an_invalid_trigger_is_quarantined_and_the_others_fire(store: S) {
    let start = t0();
    let mut broken = interval_job("broken", 10.0, start);
    // A trigger this version refuses (the store does not validate; an older version might have).
    broken.spec.trigger = Trigger::Cron {
        expr: "not a cron".into(),
        timezone: "UTC".into(),
        start_at: None,
        end_at: None,
    };
    store.create_job(broken, false).await.unwrap();
    store
        .create_job(interval_job("fine", 10.0, start), false)
        .await
        .unwrap();

    let pass = store.fire_due(start + secs(1.0), 10).await.unwrap();
    assert_eq!(pass.quarantined.len(), 1, "{pass:?}");
    assert_eq!(pass.quarantined[0].job_id, "broken");
    assert!(
        pass.quarantined[0].reason.contains("trigger.expr"),
        "{pass:?}"
    );
    assert_eq!(pass.fires.len(), 1);
    assert_eq!(pass.fires[0].job_id.as_str(), "fine");
    let job = store
        .get_job(&JobId::try_from("broken").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Quarantined);
    assert!(job.quarantine_reason.is_some());
    // Set aside: the next pass neither fires nor reports it again.
    let pass = store.fire_due(start + secs(10.0), 10).await.unwrap();
    assert!(pass.quarantined.is_empty());
    assert!(pass.fires.iter().all(|f| f.job_id.as_str() == "fine"));
}

pub async fn job_writes_are_compare_and_set_on_the_version(store: S) {
    let start = t0();
    let created = store
        .create_job(interval_job("cas", 10.0, start), false)
        .await
        .unwrap();
    let v1 = created.version;
    let id = created.spec.id.clone();

    // Two writers read v1; the first one's pause lands, the second one's stale copy does not.
    let mut paused = created.clone();
    paused.state = JobState::Paused;
    let Cas::Done(after_pause) = store.update_job(paused, v1).await.unwrap() else {
        panic!("the first write applies")
    };
    assert!(after_pause.version > v1);
    let mut stale = created.clone();
    stale.spec.name = Some("renamed".into());
    assert_eq!(store.update_job(stale, v1).await.unwrap(), Cas::Stale);
    let now = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(now.state, JobState::Paused, "the pause was not overwritten");
    assert_eq!(now.spec.name, created.spec.name);

    // A fire moves the version on too.
    let mut active = now.clone();
    active.state = JobState::Active;
    let Cas::Done(active) = store.update_job(active, now.version).await.unwrap() else {
        panic!("resume applies")
    };
    store.fire_due(start + secs(1.0), 10).await.unwrap();
    let fired = store.get_job(&id).await.unwrap().unwrap();
    assert!(fired.version > active.version, "a fire is a write");
    assert_eq!(
        store
            .update_job(active.clone(), active.version)
            .await
            .unwrap(),
        Cas::Stale
    );

    // Replacing continues the version, so a version read before matches nothing after.
    let replaced = store
        .create_job(interval_job("cas", 5.0, start), true)
        .await
        .unwrap();
    assert!(replaced.version > fired.version);

    // Deletes: a stale version deletes nothing; the current one does.
    assert_eq!(
        store.delete_job(&id, Some(fired.version)).await.unwrap(),
        Cas::Stale
    );
    assert_eq!(
        store.delete_job(&id, Some(replaced.version)).await.unwrap(),
        Cas::Done(())
    );
    let missing = interval_job("never-created", 10.0, start);
    assert_eq!(store.update_job(missing, 1).await.unwrap(), Cas::NotFound);
}

pub async fn workers_report_heartbeats(store: S) {
    let now = t0();
    let info = WorkerInfo {
        id: WorkerId("host:1:abc".into()),
        host: "host".into(),
        queues: vec![QueueName::default_queue()],
        concurrency: 8,
        running: 2,
        started_at: now,
        last_heartbeat_at: now,
    };
    store.worker_heartbeat(&info).await.unwrap();
    let again = WorkerInfo {
        running: 3,
        last_heartbeat_at: now + secs(5.0),
        ..info.clone()
    };
    store.worker_heartbeat(&again).await.unwrap();
    assert_eq!(store.list_workers().await.unwrap(), vec![again]);
    store.remove_worker(&info.id).await.unwrap();
    assert!(store.list_workers().await.unwrap().is_empty());
}

pub async fn a_late_publish_confirm_does_not_mark_a_newer_take_published(store: S) {
    let now = t0();
    let window = secs(300.0);
    let lease = secs(10.0);
    let mark = |t: DateTime<Utc>| t - window + lease;
    let id = store.submit(vec![task(now)], now).await.unwrap()[0].task.id;
    // Attempt 1's message is taken; its confirm is slow. Meanwhile the task runs, fails and is due
    // again, and attempt 2's message is taken.
    let first = store
        .take_for_dispatch(now, 10, now - window, mark(now))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let claim = store
        .claim(&req("w", &["default"], 1, now))
        .await
        .unwrap()
        .remove(0);
    let retry_at = now + secs(1.0);
    store
        .finish(
            lease_of(&claim.task),
            Finish::Retry {
                at: retry_at,
                error: ErrorInfo::new("error", "x"),
            },
            now,
        )
        .await
        .unwrap();
    let t2 = retry_at + secs(0.5);
    let second = store
        .take_for_dispatch(t2, 10, t2 - window, mark(t2))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    // Attempt 1's confirm arrives now: it must not stamp attempt 2's take.
    store.mark_dispatched(&[id], mark(now), t2).await.unwrap();
    // Attempt 2's publish was never confirmed: after its publish lease (not after the whole
    // redelivery window) the task is handed out again.
    let t3 = t2 + lease + secs(1.0);
    let again = store
        .take_for_dispatch(t3, 10, t3 - window, mark(t3))
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|h| h.task_id).collect::<Vec<_>>(),
        vec![id],
        "the late confirm of an older take stamped the newer one"
    );
}

pub async fn the_outbox_hands_out_each_queued_task_once_until_redelivery(store: S) {
    let now = t0();
    let window = secs(60.0);
    let lease = secs(10.0);
    // What a dispatcher does at `t`: take with a publish lease.
    let take = |t: DateTime<Utc>| {
        let store = store.clone();
        async move {
            let hints = store
                .take_for_dispatch(t, 10, t - window, t - window + lease)
                .await
                .unwrap();
            hints
                .into_iter()
                .map(|h| h.task_id)
                .collect::<std::collections::HashSet<_>>()
        }
    };
    let out = store
        .submit(
            vec![task(now), task(now), task(now), task(now + secs(30.0))],
            now,
        )
        .await
        .unwrap();
    let ids: Vec<_> = out.iter().map(|s| s.task.id).collect();
    let first = take(now).await;
    assert_eq!(first.len(), 3, "the scheduled task is not due yet");
    assert!(
        take(now).await.is_empty(),
        "taken tasks are not handed out twice"
    );

    // Two are confirmed; the third's dispatcher died before the confirm: after the publish lease,
    // another dispatcher takes it over, and only it.
    let mark = |t: DateTime<Utc>| t - window + lease;
    store
        .mark_dispatched(&ids[..2], mark(now), now)
        .await
        .unwrap();
    assert!(take(now + secs(9.0)).await.is_empty());
    let t1 = now + secs(11.0);
    assert_eq!(take(t1).await, [ids[2]].into_iter().collect());
    store
        .mark_dispatched(&ids[2..3], mark(t1), t1)
        .await
        .unwrap();

    // A claimed task needs no message; confirmed ones still unclaimed are published again after the
    // redelivery window, and the scheduled one once it is due.
    let claimed = store
        .claim(&req("w", &["default"], 1, t1))
        .await
        .unwrap()
        .remove(0);
    let later = now + secs(61.0);
    let redelivered = take(later).await;
    assert!(!redelivered.contains(&claimed.task.id));
    assert!(redelivered.contains(&ids[3]), "the scheduled task, now due");
    assert_eq!(redelivered.len(), 2, "{redelivered:?}");

    // A retry makes the task need a message again when it is due.
    let at = later + secs(1.0);
    store
        .finish(
            lease_of(&claimed.task),
            Finish::Retry {
                at,
                error: ErrorInfo::new("error", "x"),
            },
            later,
        )
        .await
        .unwrap();
    assert!(take(later).await.is_empty());
    assert_eq!(take(at).await, [claimed.task.id].into_iter().collect());
    assert_eq!(store.next_ready_at_any().await.unwrap(), None);
}

pub async fn a_batch_of_hints_claims_each_runnable_task_once(store: S) {
    let now = t0();
    let out = store
        .submit(vec![task(now), task(now), task(now + secs(60.0))], now)
        .await
        .unwrap();
    let ids: Vec<_> = out.iter().map(|s| s.task.id).collect();
    let worker = WorkerId("w".into());
    // Hint 0 twice, hint 1, the not-yet-due task 2 and an unknown id.
    let hints = [
        ids[0],
        ids[1],
        ids[0],
        ids[2],
        idem_core::TaskId::generate(),
    ];
    let claims = store
        .claim_ids(&hints, &worker, now, now + secs(30.0))
        .await
        .unwrap();
    let mut got: Vec<_> = claims.iter().map(|c| c.task.id).collect();
    got.sort();
    let mut want = vec![ids[0], ids[1]];
    want.sort();
    assert_eq!(got, want);
    assert!(claims
        .iter()
        .all(|c| c.task.state == TaskState::Running && c.task.attempts == 1));
    // Claimed already: a second batch of the same hints claims nothing.
    let again = store
        .claim_ids(&ids[..2], &worker, now, now + secs(30.0))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

pub async fn a_group_of_outcomes_fences_each_item_alone(store: S) {
    let now = t0();
    store
        .submit(vec![task(now), task(now), task(now), task(now)], now)
        .await
        .unwrap();
    let claims = store.claim(&req("a", &["default"], 4, now)).await.unwrap();
    assert_eq!(claims.len(), 4);
    let [a, b, c, e] = [
        &claims[0].task,
        &claims[1].task,
        &claims[2].task,
        &claims[3].task,
    ];
    // b is cancelled meanwhile: its running attempt is fenced.
    store.cancel_task(b.id, now).await.unwrap();
    let stale = Lease {
        task_id: e.id,
        attempt: e.attempts + 1,
    };
    let missing = Lease {
        task_id: idem_core::TaskId::generate(),
        attempt: 1,
    };
    let out = store
        .finish_many(
            vec![
                (lease_of(a), Finish::Succeeded(json!({"n": 1}))),
                (lease_of(b), Finish::Succeeded(json!("late"))),
                (stale, Finish::Succeeded(json!("stale"))),
                (missing, Finish::Succeeded(json!("none"))),
                (
                    lease_of(c),
                    Finish::Retry {
                        at: now + secs(5.0),
                        error: ErrorInfo::new("error", "x"),
                    },
                ),
            ],
            now,
        )
        .await
        .unwrap();
    assert_eq!(out.len(), 5);
    let done = out[0].as_ref().unwrap();
    assert_eq!(
        (done.id, done.state, done.result.clone()),
        (a.id, TaskState::Succeeded, Some(json!({"n": 1})))
    );
    assert!(
        matches!(out[1], Err(StoreError::Fenced { .. })),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(out[2], Err(StoreError::Fenced { .. })),
        "{:?}",
        out[2]
    );
    assert!(
        matches!(out[3], Err(StoreError::TaskNotFound(_))),
        "{:?}",
        out[3]
    );
    let retry = out[4].as_ref().unwrap();
    assert_eq!((retry.id, retry.state), (c.id, TaskState::Retrying));
    assert_eq!(
        store.get_task(b.id).await.unwrap().unwrap().state,
        TaskState::Cancelled
    );
    // The same lease twice in one group: written once, the second refused.
    let d = {
        store.submit(vec![task(now)], now).await.unwrap();
        store
            .claim(&req("a", &["default"], 1, now))
            .await
            .unwrap()
            .remove(0)
            .task
    };
    let out = store
        .finish_many(
            vec![
                (lease_of(&d), Finish::Succeeded(json!("first"))),
                (lease_of(&d), Finish::Succeeded(json!("second"))),
            ],
            now,
        )
        .await
        .unwrap();
    assert_eq!(out[0].as_ref().unwrap().result, Some(json!("first")));
    assert!(matches!(out[1], Err(StoreError::Fenced { .. })));
}

pub async fn concurrent_single_submits_each_get_their_own_answer(store: S) {
    let now = t0();
    store
        .submit(vec![keyed(task(now), "taken", 3600.0)], now)
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..48 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let t = match i % 3 {
                // A new task without a key, a new key, and a conflict on "taken".
                0 => task(now),
                1 => keyed(task(now), &format!("k-{i}"), 3600.0),
                _ => {
                    let mut t = keyed(task(now), "taken", 3600.0);
                    t.args = json!({"other": i});
                    t.idempotency.as_mut().unwrap().fingerprint = format!("other-{i}");
                    t
                }
            };
            (i, store.submit(vec![t], now).await)
        }));
    }
    let mut made = 0;
    for h in handles {
        let (i, r) = h.await.unwrap();
        match i % 3 {
            0 | 1 => {
                let s = r.unwrap();
                assert!(!s[0].replayed);
                made += 1;
            }
            _ => assert!(
                matches!(r, Err(StoreError::KeyConflict { index: 0, .. })),
                "{r:?}"
            ),
        }
    }
    let page = store
        .list_tasks(
            &TaskFilter::default(),
            &PageRequest {
                limit: 100,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), made + 1);
}

/// Concurrent one-task submissions (grouped by a store that groups them) each decide their key as
/// a lone submission would: a stored live key replays its task, an expired one makes a new task
/// that later submissions of the key replay, and a new key repeated among them makes one task.
pub async fn concurrent_single_submits_replay_live_keys_and_renew_expired_ones(store: S) {
    let now = t0();
    let live = store
        .submit(vec![keyed(task(now), "live", 3600.0)], now)
        .await
        .unwrap()
        .remove(0)
        .task;
    let before = now - secs(20.0);
    let old = store
        .submit(vec![keyed(task(before), "old", 10.0)], before)
        .await
        .unwrap()
        .remove(0)
        .task;
    let mut handles = Vec::new();
    for i in 0..36 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let t = match i % 3 {
                0 => keyed(task(now), "live", 3600.0),
                1 => {
                    let mut t = task(now);
                    t.args = json!({"renewed": true});
                    keyed(t, "old", 3600.0)
                }
                _ => keyed(task(now), "fresh", 3600.0),
            };
            (i, store.submit(vec![t], now).await.unwrap().remove(0))
        }));
    }
    let mut by_kind: [Vec<Submitted>; 3] = Default::default();
    for h in handles {
        let (i, s) = h.await.unwrap();
        by_kind[i % 3].push(s);
    }
    assert!(
        by_kind[0]
            .iter()
            .all(|s| s.replayed && s.task.id == live.id),
        "a live key replays its task"
    );
    for made in &by_kind[1..] {
        assert_eq!(
            made.iter().filter(|s| !s.replayed).count(),
            1,
            "one new task per key"
        );
        let ids: std::collections::HashSet<_> = made.iter().map(|s| s.task.id).collect();
        assert_eq!(ids.len(), 1, "the others replay it");
    }
    assert_ne!(
        by_kind[1][0].task.id, old.id,
        "an expired key makes a new task"
    );
    assert_eq!(by_kind[1][0].task.args, json!({"renewed": true}));
    let page = store
        .list_tasks(
            &TaskFilter::default(),
            &PageRequest {
                limit: 100,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 4);
}
