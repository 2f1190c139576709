//! Builders for the values conformance cases need.

use chrono::{DateTime, Utc};
use idem_core::job::JobSpec;
use idem_core::task::{fingerprint, Idempotency};
use idem_core::{
    IdempotencyKey, Job, JobId, JobState, NewTask, QueueName, TaskId, TaskName, Trigger,
};
use serde_json::{json, Value};

/// A fixed, millisecond-aligned instant to build times from.
pub fn t0() -> DateTime<Utc> {
    idem_core::time::trunc_ms(Utc::now())
}

pub fn secs(s: f64) -> chrono::Duration {
    idem_core::time::chrono_secs(s)
}

/// A `noop` task in `default`, runnable at `run_at`.
pub fn task(run_at: DateTime<Utc>) -> NewTask {
    NewTask {
        id: TaskId::generate(),
        task: TaskName::try_from("noop").unwrap(),
        args: json!({}),
        queue: QueueName::default_queue(),
        priority: 0,
        max_retries: 3,
        timeout_seconds: 30.0,
        run_at,
        expires_at: None,
        job_id: None,
        idempotency: None,
        traceparent: None,
    }
}

/// Adds an idempotency key whose fingerprint covers the task's args.
pub fn keyed(mut t: NewTask, key: &str, ttl: f64) -> NewTask {
    let fp = fingerprint(&t.task, &t.args, &t.queue, t.priority, &Value::Null);
    t.idempotency = Some(Idempotency {
        key: IdempotencyKey::try_from(key.to_owned()).unwrap(),
        fingerprint: fp,
        ttl_seconds: ttl,
    });
    t
}

/// An active interval job firing every `every` seconds from `start`.
pub fn interval_job(id: &str, every: f64, start: DateTime<Utc>) -> Job {
    Job {
        spec: JobSpec {
            id: JobId::try_from(id).unwrap(),
            name: Some(format!("job {id}")),
            task: TaskName::try_from("noop").unwrap(),
            args: json!({"job": id}),
            trigger: Trigger::Interval {
                every_seconds: every,
                start_at: Some(start),
                end_at: None,
            },
            misfire_grace_seconds: 3600.0,
            coalesce: false,
            max_instances: 1000,
            jitter_seconds: 0.0,
            queue: QueueName::default_queue(),
            priority: 0,
            max_retries: 0,
            timeout_seconds: 30.0,
            idempotency_ttl_seconds: 86_400.0,
        },
        state: JobState::Active,
        next_run_at: Some(start),
        last_run_at: None,
        created_at: start,
        updated_at: start,
        version: 1,
        quarantine_reason: None,
    }
}
