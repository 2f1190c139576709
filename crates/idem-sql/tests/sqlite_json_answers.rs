//! The SQLite store's hot writes (a batch submit, a one-queue claim, an outcome group) answer with
//! their tasks as one JSON row instead of a row per task. These tests hold that encoding to the
//! row one: every task they return equals the same task read back as a row, for values chosen to
//! trip a JSON round trip (floats needing 17 digits, escapes, unicode, big integers).

use chrono::{Duration, Utc};
use idem_core::store::{ClaimRequest, Lease};
use idem_core::time::trunc_ms;
use idem_core::{ErrorInfo, Finish, QueueName, Store, StoreError, TaskId, WorkerId};
use idem_sql::SqliteStore;
use serde_json::json;

async fn fresh() -> SqliteStore {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("idem.db").display());
    SqliteStore::open(&url).await.unwrap()
}

fn awkward_args(i: usize) -> serde_json::Value {
    json!({
        "i": i,
        "quote": "she said \"hi\"\\n\n\t\u{0001}",
        "unicode": "héllo ✓ 🦀",
        "big": u64::MAX,
        "small": i64::MIN,
        "float": 0.1 + 0.2,
        "nested": [null, true, {"x": [2.5, -0.0]}],
    })
}

const TIMEOUTS: [f64; 5] = [
    0.1 + 0.2,
    1e-9,
    123_456.789_012_345_67,
    30.0,
    1.797_693_134_862_315_7e308,
];

#[tokio::test]
async fn batch_submit_claim_and_outcome_group_answer_what_a_read_returns() {
    let store = fresh().await;
    let now = trunc_ms(Utc::now());
    let batch: Vec<_> = TIMEOUTS
        .iter()
        .enumerate()
        .map(|(i, timeout)| {
            let mut t = idem_testkit::fixtures::task(now);
            t.args = awkward_args(i);
            t.timeout_seconds = *timeout;
            t.priority = -(i as i16);
            t.expires_at = Some(now + Duration::hours(1));
            t
        })
        .collect();
    let submitted = store.submit(batch.clone(), now).await.unwrap();
    assert_eq!(submitted.len(), batch.len());
    for (s, t) in submitted.iter().zip(&batch) {
        assert_eq!(s.task.id, t.id, "answers keep the batch's order");
        assert_eq!(s.task.args, t.args);
        assert_eq!(
            s.task.timeout_seconds.to_bits(),
            t.timeout_seconds.to_bits()
        );
        assert_eq!(Some(&s.task), store.get_task(t.id).await.unwrap().as_ref());
    }

    let claims = store
        .claim(&ClaimRequest {
            worker: WorkerId("w".into()),
            queues: vec![QueueName::default_queue()],
            limit: 10,
            now,
            lease_until: now + Duration::seconds(60),
        })
        .await
        .unwrap();
    let claimed: Vec<TaskId> = claims.iter().map(|c| c.task.id).collect();
    let expected: Vec<TaskId> = batch.iter().map(|t| t.id).collect();
    assert_eq!(claimed, expected, "highest priority first");
    for c in &claims {
        assert_eq!(
            Some(&c.task),
            store.get_task(c.task.id).await.unwrap().as_ref()
        );
    }

    let error = ErrorInfo {
        kind: "boom".into(),
        message: "line one\nline \"two\" ✓".into(),
    };
    let lease = |i: usize| Lease {
        task_id: claims[i].task.id,
        attempt: claims[i].task.attempts,
    };
    let items = vec![
        (lease(0), Finish::Succeeded(awkward_args(99))),
        (lease(1), Finish::Failed(error.clone())),
        (
            lease(2),
            Finish::Retry {
                at: now + Duration::seconds(5),
                error,
            },
        ),
        (
            Lease {
                task_id: claims[3].task.id,
                attempt: claims[3].task.attempts + 1,
            },
            Finish::Succeeded(json!(null)),
        ),
        (
            Lease {
                task_id: TaskId::generate(),
                attempt: 1,
            },
            Finish::Succeeded(json!(null)),
        ),
    ];
    let out = store.finish_many(items.clone(), now).await.unwrap();
    assert_eq!(out.len(), items.len());
    for (r, (lease, _)) in out.iter().zip(&items).take(3) {
        let task = r.as_ref().unwrap();
        assert_eq!(task.id, lease.task_id);
        assert_eq!(
            Some(task),
            store.get_task(lease.task_id).await.unwrap().as_ref()
        );
    }
    assert_eq!(out[0].as_ref().unwrap().result, Some(awkward_args(99)));
    assert!(
        matches!(out[3], Err(StoreError::Fenced { task_id, .. }) if task_id == claims[3].task.id),
        "a superseded attempt is fenced: {:?}",
        out[3]
    );
    assert!(
        matches!(out[4], Err(StoreError::TaskNotFound(_))),
        "an unknown task is not found: {:?}",
        out[4]
    );
    // The fenced attempt wrote nothing: its task is still running under its real attempt.
    let still = store.get_task(claims[3].task.id).await.unwrap().unwrap();
    assert_eq!(still, claims[3].task);
}
