//! `fail` `{"message": M, "times": N}`: fails attempts 1..=N (every attempt when N is absent) with a
//! retryable `error`, then returns `null` — a deterministic way to exercise retries and backoff.
//!
//! Invariant: the outcome depends only on the attempt number the worker passes in, so a test can
//! call it with any attempt and know the answer.

use idem_core::{Registry, TaskContext, TaskError};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailArgs {
    message: Option<String>,
    times: Option<u32>,
}

pub(crate) fn register(registry: &mut Registry) {
    // `Option` so that `null` arguments mean "fail every attempt with the default message".
    registry.register(
        "fail",
        |ctx: TaskContext, args: Option<FailArgs>| async move {
            let args = args.unwrap_or_default();
            let fails = match args.times {
                None => true,
                Some(times) => i64::from(ctx.attempt) <= i64::from(times),
            };
            if fails {
                let message = args.message.unwrap_or_else(|| "fail task".to_owned());
                return Err(TaskError::retry("error", message));
            }
            Ok(Value::Null)
        },
    );
}

#[cfg(test)]
mod tests {
    use idem_core::TaskError;
    use serde_json::{json, Value};

    use crate::test_support::{assert_gives_up, call, ctx, registry};
    use crate::BuiltinConfig;

    #[tokio::test]
    async fn fail_fails_the_first_n_attempts_then_succeeds() {
        let registry = registry(BuiltinConfig::default());
        let args = json!({"message": "boom", "times": 2});
        for attempt in 1..=2 {
            let err = call(&registry, "fail", ctx(attempt), args.clone())
                .await
                .unwrap_err();
            assert_eq!(err, TaskError::retry("error", "boom"), "attempt {attempt}");
        }
        for attempt in 3..=4 {
            let out = call(&registry, "fail", ctx(attempt), args.clone()).await;
            assert_eq!(out, Ok(Value::Null), "attempt {attempt}");
        }
    }

    #[tokio::test]
    async fn fail_without_times_fails_every_attempt_with_the_default_message() {
        let registry = registry(BuiltinConfig::default());
        for args in [json!({}), json!(null)] {
            for attempt in [1, 5, 100] {
                let err = call(&registry, "fail", ctx(attempt), args.clone())
                    .await
                    .unwrap_err();
                assert_eq!(err, TaskError::retry("error", "fail task"));
            }
        }
    }

    #[tokio::test]
    async fn fail_with_zero_times_succeeds_at_once() {
        let registry = registry(BuiltinConfig::default());
        let out = call(&registry, "fail", ctx(1), json!({"times": 0})).await;
        assert_eq!(out, Ok(Value::Null));
    }

    #[tokio::test]
    async fn fail_refuses_negative_times() {
        let registry = registry(BuiltinConfig::default());
        let err = call(&registry, "fail", ctx(1), json!({"times": -1}))
            .await
            .unwrap_err();
        assert_gives_up(&err, "bad_args");
    }
}
