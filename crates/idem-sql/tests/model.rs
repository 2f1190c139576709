//! A state-machine test of the task lifecycle and idempotency: random sequences of submits (with a
//! few keys and bodies), claims, outcomes from current and superseded attempts, cancels, hand-backs,
//! clock steps and lease reaping run against the SQLite store and against a plain in-memory model of
//! what the guarantees promise; after every step each task's state and attempt count must agree.
//!
//! What it pins down: one task per live key (a replay returns it, another body is refused), an
//! outcome is accepted only from the task's current running attempt (so a completion is recorded
//! once and a final state never changes), and an expired lease is reaped exactly once.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use idem_core::store::{ClaimRequest, Lease};
use idem_core::task::{fingerprint, Idempotency};
use idem_core::{
    ErrorInfo, Finish, IdempotencyKey, QueueName, Store, StoreError, TaskId, TaskState, WorkerId,
};
use idem_sql::SqliteStore;
use idem_testkit::fixtures::{secs, t0, task};
use proptest::prelude::*;
use serde_json::{json, Value};

const KEYS: usize = 3;
const LEASE_SECONDS: f64 = 10.0;
const MAX_RETRIES: i32 = 1;

#[derive(Debug, Clone)]
enum Op {
    Submit {
        key: Option<usize>,
        body: u8,
    },
    Claim,
    /// An outcome for task `pick`, from its current attempt or (when `stale`) the one before.
    Finish {
        pick: usize,
        stale: bool,
        how: u8,
    },
    Cancel {
        pick: usize,
    },
    Release {
        pick: usize,
    },
    Advance {
        seconds: u8,
    },
    Reap,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (prop::option::of(0..KEYS), 0u8..2).prop_map(|(key, body)| Op::Submit { key, body }),
        3 => Just(Op::Claim),
        3 => (0usize..8, any::<bool>(), 0u8..3).prop_map(|(pick, stale, how)| Op::Finish { pick, stale, how }),
        1 => (0usize..8).prop_map(|pick| Op::Cancel { pick }),
        1 => (0usize..8).prop_map(|pick| Op::Release { pick }),
        2 => (0u8..15).prop_map(|seconds| Op::Advance { seconds }),
        1 => Just(Op::Reap),
    ]
}

/// What the model knows of one task.
#[derive(Debug, Clone)]
struct M {
    id: TaskId,
    state: TaskState,
    attempts: i32,
    run_at: DateTime<Utc>,
    lease_until: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct Model {
    tasks: Vec<M>,
    /// key -> (body, index of its task)
    keys: HashMap<usize, (u8, usize)>,
}

impl Model {
    fn promote(&mut self, now: DateTime<Utc>) {
        for t in &mut self.tasks {
            if t.state == TaskState::Retrying && t.run_at <= now {
                t.state = TaskState::Queued;
            }
        }
    }
}

fn keyed(key: Option<usize>, body: u8, now: DateTime<Utc>) -> idem_core::NewTask {
    let mut t = task(now);
    t.max_retries = MAX_RETRIES;
    t.args = json!({ "body": body });
    if let Some(k) = key {
        t.idempotency = Some(Idempotency {
            key: IdempotencyKey::try_from(format!("key-{k}")).unwrap(),
            fingerprint: fingerprint(&t.task, &t.args, &t.queue, t.priority, &Value::Null),
            ttl_seconds: 86_400.0,
        });
    }
    t
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("idem.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
    let mut model = Model::default();
    let mut now = t0();
    let worker = WorkerId("w".into());

    for (step, op) in ops.into_iter().enumerate() {
        let at = format!("step {step}: {op:?}");
        match op {
            Op::Submit { key, body } => {
                let got = store.submit(vec![keyed(key, body, now)], now).await;
                match key.and_then(|k| model.keys.get(&k).copied()) {
                    Some((b, i)) if b == body => {
                        let s = got.unwrap().remove(0);
                        assert!(s.replayed, "{at}: a replay");
                        assert_eq!(s.task.id, model.tasks[i].id, "{at}: the key's task");
                    }
                    Some(_) => assert!(
                        matches!(got, Err(StoreError::KeyConflict { .. })),
                        "{at}: another body is refused: {got:?}"
                    ),
                    None => {
                        let s = got.unwrap().remove(0);
                        assert!(!s.replayed, "{at}");
                        if let Some(k) = key {
                            model.keys.insert(k, (body, model.tasks.len()));
                        }
                        model.tasks.push(M {
                            id: s.task.id,
                            state: TaskState::Queued,
                            attempts: 0,
                            run_at: now,
                            lease_until: None,
                        });
                    }
                }
            }
            Op::Claim => {
                model.promote(now);
                let claims = store
                    .claim(&ClaimRequest {
                        worker: worker.clone(),
                        queues: vec![QueueName::default_queue()],
                        limit: 1,
                        now,
                        lease_until: now + secs(LEASE_SECONDS),
                    })
                    .await
                    .unwrap();
                let runnable = model.tasks.iter().any(|t| t.state == TaskState::Queued);
                assert_eq!(claims.len(), usize::from(runnable), "{at}: {claims:?}");
                if let Some(c) = claims.first() {
                    let t = model
                        .tasks
                        .iter_mut()
                        .find(|t| t.id == c.task.id)
                        .expect("a known task");
                    assert_eq!(
                        t.state,
                        TaskState::Queued,
                        "{at}: only a runnable task is claimed"
                    );
                    t.state = TaskState::Running;
                    t.attempts += 1;
                    t.lease_until = Some(now + secs(LEASE_SECONDS));
                    assert_eq!(c.task.attempts, t.attempts, "{at}: a new fencing token");
                }
            }
            Op::Finish { pick, stale, how } => {
                if model.tasks.is_empty() {
                    continue;
                }
                let i = pick % model.tasks.len();
                let t = model.tasks[i].clone();
                let attempt = if stale { t.attempts - 1 } else { t.attempts };
                let finish = match how {
                    0 => Finish::Succeeded(json!("ok")),
                    1 => Finish::Retry {
                        at: now + secs(1.0),
                        error: ErrorInfo::new("error", "x"),
                    },
                    _ => Finish::Failed(ErrorInfo::new("error", "x")),
                };
                let got = store
                    .finish(
                        Lease {
                            task_id: t.id,
                            attempt,
                        },
                        finish.clone(),
                        now,
                    )
                    .await;
                let current = t.state == TaskState::Running && attempt == t.attempts;
                if current {
                    let task = got.unwrap_or_else(|e| panic!("{at}: refused {e}"));
                    let m = &mut model.tasks[i];
                    m.lease_until = None;
                    m.state = match finish {
                        Finish::Succeeded(_) => TaskState::Succeeded,
                        Finish::Retry { at, .. } => {
                            m.run_at = at;
                            TaskState::Retrying
                        }
                        Finish::Failed(_) => TaskState::Failed,
                    };
                    assert_eq!(task.state, m.state, "{at}");
                } else {
                    assert!(
                        matches!(got, Err(StoreError::Fenced { .. })),
                        "{at}: an outcome from a non-current attempt is refused: {got:?}"
                    );
                }
            }
            Op::Cancel { pick } => {
                if model.tasks.is_empty() {
                    continue;
                }
                let i = pick % model.tasks.len();
                let got = store.cancel_task(model.tasks[i].id, now).await.unwrap();
                let m = &mut model.tasks[i];
                if !m.state.is_final() {
                    m.state = TaskState::Cancelled;
                    m.lease_until = None;
                }
                assert_eq!(got.map(|t| t.state), Some(m.state), "{at}");
            }
            Op::Release { pick } => {
                if model.tasks.is_empty() {
                    continue;
                }
                let i = pick % model.tasks.len();
                let m = &mut model.tasks[i];
                let lease = Lease {
                    task_id: m.id,
                    attempt: m.attempts,
                };
                store.release(lease, now).await.unwrap();
                if m.state == TaskState::Running {
                    m.state = TaskState::Queued;
                    m.run_at = now;
                    m.lease_until = None;
                }
            }
            Op::Advance { seconds } => now += secs(f64::from(seconds)),
            Op::Reap => {
                let reaped = store.reap_leases(now).await.unwrap();
                let mut expected = Vec::new();
                for m in &mut model.tasks {
                    if m.state == TaskState::Running && m.lease_until.is_some_and(|l| l < now) {
                        m.state = if m.attempts > MAX_RETRIES {
                            TaskState::Failed
                        } else {
                            TaskState::Queued
                        };
                        m.run_at = now;
                        m.lease_until = None;
                        expected.push((m.id, m.state));
                    }
                }
                let mut got: Vec<_> = reaped.iter().map(|r| (r.task_id, r.state)).collect();
                got.sort_by_key(|(id, _)| *id);
                expected.sort_by_key(|(id, _)| *id);
                assert_eq!(got, expected, "{at}: each expired lease reaped once");
            }
        }
        for m in &model.tasks {
            let t = store
                .get_task(m.id)
                .await
                .unwrap()
                .expect("tasks are never lost");
            assert_eq!(
                (t.state, t.attempts),
                (m.state, m.attempts),
                "{at}: task {}",
                m.id
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_store_follows_the_task_and_idempotency_model(ops in prop::collection::vec(op(), 1..60)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
