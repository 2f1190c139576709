//! `sleep` `{"seconds": S}`: waits S seconds, then returns `null`.
//!
//! Invariant: it never outlives its attempt — it returns as soon as the attempt is cancelled (and
//! the worker dropping the future on timeout stops it too), so a sleeping task cannot hold a worker
//! slot after cancellation.

use std::time::Duration;

use idem_core::{Registry, TaskContext, TaskError};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepArgs {
    seconds: f64,
}

pub(crate) fn register(registry: &mut Registry) {
    registry.register("sleep", |ctx: TaskContext, args: SleepArgs| async move {
        let duration = parse_seconds(args.seconds)?;
        tokio::select! {
            () = tokio::time::sleep(duration) => Ok(Value::Null),
            () = ctx.cancel.cancelled() => Err(TaskError::retry("cancelled", "sleep was cancelled")),
        }
    });
}

fn parse_seconds(seconds: f64) -> Result<Duration, TaskError> {
    if seconds.is_nan() || seconds < 0.0 {
        return Err(TaskError::give_up(
            "bad_args",
            format!("seconds must be a number >= 0, got {seconds}"),
        ));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| TaskError::give_up("bad_args", format!("seconds is too large: {seconds}")))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use crate::test_support::{assert_gives_up, assert_retries, call, ctx, registry};
    use crate::BuiltinConfig;

    #[tokio::test(start_paused = true)]
    async fn sleep_returns_null_after_the_given_time() {
        let registry = registry(BuiltinConfig::default());
        let started = tokio::time::Instant::now();
        let out = call(&registry, "sleep", ctx(1), json!({"seconds": 2.5})).await;
        assert_eq!(out, Ok(Value::Null));
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
    }

    #[tokio::test]
    async fn sleep_returns_quickly_when_the_attempt_is_cancelled() {
        let registry = registry(BuiltinConfig::default());
        let ctx = ctx(1);
        let cancel = ctx.cancel.clone();
        let sleeping =
            tokio::spawn(
                async move { call(&registry, "sleep", ctx, json!({"seconds": 3600})).await },
            );
        cancel.cancel();
        let started = Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(2), sleeping)
            .await
            .expect("sleep honoured cancellation")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_retries(&out.unwrap_err(), "cancelled");
    }

    #[tokio::test]
    async fn sleep_refuses_negative_or_missing_seconds() {
        let registry = registry(BuiltinConfig::default());
        for args in [
            json!({"seconds": -1}),
            json!({}),
            json!(null),
            json!({"seconds": "1"}),
        ] {
            let err = call(&registry, "sleep", ctx(1), args.clone())
                .await
                .unwrap_err();
            assert_gives_up(&err, "bad_args");
        }
        let err = call(&registry, "sleep", ctx(1), json!({"seconds": 1e300}))
            .await
            .unwrap_err();
        assert_gives_up(&err, "bad_args");
    }
}
