//! Tasks: one execution of a registered handler, its state machine and the values the
//! store and the engines exchange about it.
//!
//! Invariant: a task reaches a final state (`succeeded`, `failed`, `cancelled`, `expired`) once; the
//! transitions allowed are exactly those of [`TaskState::can_become`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ids::{IdempotencyKey, JobId, QueueName, TaskId, TaskName};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its eta.
    Scheduled,
    /// Ready for a worker.
    Queued,
    /// Claimed by a worker under a lease.
    Running,
    /// Waiting for its retry backoff, then `queued`.
    Retrying,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Scheduled,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Retrying,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Expired => "expired",
        }
    }

    /// Final states never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::Expired
        )
    }

    /// The state machine of a task.
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        match self {
            Scheduled => matches!(next, Queued | Cancelled | Expired),
            Queued => matches!(next, Running | Cancelled | Expired),
            Running => matches!(next, Succeeded | Failed | Retrying | Queued | Cancelled),
            Retrying => matches!(next, Queued | Running | Cancelled | Expired),
            Succeeded | Failed | Cancelled | Expired => false,
        }
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

/// What went wrong in an attempt, as stored and shown (`{"kind","message"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    /// A short machine-readable class: `error`, `timeout`, `lease_expired`, `bad_args`, `http_status`…
    pub kind: String,
    pub message: String,
}

impl ErrorInfo {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

/// A task as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    #[schema(value_type = String, format = Uuid)]
    pub id: TaskId,
    #[schema(value_type = String)]
    pub task: TaskName,
    pub args: Value,
    pub state: TaskState,
    #[schema(value_type = String)]
    pub queue: QueueName,
    pub priority: i16,
    /// Attempts started so far; the current attempt's number while running (the fencing token).
    pub attempts: i32,
    pub max_retries: i32,
    pub timeout_seconds: f64,
    #[schema(value_type = Option<String>)]
    pub idempotency_key: Option<IdempotencyKey>,
    #[schema(value_type = Option<String>)]
    pub job_id: Option<JobId>,
    /// When the task is meant to run: its eta, or the fire's slot for a job's task.
    pub scheduled_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<Value>,
    pub error: Option<ErrorInfo>,
    /// The W3C `traceparent` of the span that submitted or fired the task, when traces are
    /// recorded; the attempt's span joins that trace. Not part of the API's task resource.
    #[serde(skip)]
    #[schema(ignore)]
    pub traceparent: Option<String>,
}

/// A task to insert. The caller fills in every field; the store adds nothing but its bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub id: TaskId,
    pub task: TaskName,
    pub args: Value,
    pub queue: QueueName,
    pub priority: i16,
    pub max_retries: i32,
    pub timeout_seconds: f64,
    /// When it may start; later than now makes it `scheduled`.
    pub run_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub job_id: Option<JobId>,
    pub idempotency: Option<Idempotency>,
    /// The W3C `traceparent` to store with the task ([`crate::trace::current_traceparent`]).
    pub traceparent: Option<String>,
}

/// The idempotency record that goes with a submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Idempotency {
    pub key: IdempotencyKey,
    /// Hash of the parts of the request that must match on a replay (see [`fingerprint`]).
    pub fingerprint: String,
    pub ttl_seconds: f64,
}

/// The result of one submission: the task, and whether it already existed under the same key.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub task: Task,
    pub replayed: bool,
}

/// How an attempt ended, as the worker reports it to the store. The worker has already applied the
/// retry policy: `Retry` carries the time the next attempt may start.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Succeeded(Value),
    Retry { at: DateTime<Utc>, error: ErrorInfo },
    Failed(ErrorInfo),
}

/// A claimed task: the worker may run it under the lease until `lease_until`; `task.attempts` is the
/// fencing token that every later call about this attempt must carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub task: Task,
    pub lease_until: DateTime<Utc>,
}

/// The fingerprint of a submission: SHA-256 over the fields that a replay must repeat (task, args,
/// queue, priority and the requested eta or countdown as sent), in a canonical JSON form.
/// `serde_json` maps are sorted by key, so key order in the request does not matter.
pub fn fingerprint(
    task: &TaskName,
    args: &Value,
    queue: &QueueName,
    priority: i16,
    when: &Value,
) -> String {
    let canonical = serde_json::json!({
        "task": task.as_str(),
        "args": args,
        "queue": queue.as_str(),
        "priority": priority,
        "when": when,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn final_states_never_change() {
        for from in TaskState::ALL.into_iter().filter(|s| s.is_final()) {
            for to in TaskState::ALL {
                assert!(!from.can_become(to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for st in TaskState::ALL {
            assert_eq!(st.as_str().parse::<TaskState>().unwrap(), st);
            assert_eq!(serde_json::to_value(st).unwrap(), json!(st.as_str()));
        }
    }

    #[test]
    fn fingerprints_ignore_key_order_but_not_values() {
        let t = TaskName::try_from("echo").unwrap();
        let q = QueueName::default_queue();
        let a = fingerprint(&t, &json!({"a":1,"b":2}), &q, 0, &Value::Null);
        let b = fingerprint(&t, &json!({"b":2,"a":1}), &q, 0, &Value::Null);
        let c = fingerprint(&t, &json!({"a":1,"b":3}), &q, 0, &Value::Null);
        let d = fingerprint(&t, &json!({"a":1,"b":2}), &q, 1, &Value::Null);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
