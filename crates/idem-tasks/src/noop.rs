//! `noop`: accepts any arguments and returns `null`. Useful to exercise scheduling and delivery
//! without side effects.

use idem_core::{Registry, TaskContext, TaskError};
use serde_json::Value;

pub(crate) fn register(registry: &mut Registry) {
    registry.register("noop", |_ctx: TaskContext, _args: Value| async {
        Ok::<_, TaskError>(Value::Null)
    });
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::test_support::{call, ctx, registry};
    use crate::BuiltinConfig;

    #[tokio::test]
    async fn noop_returns_null_whatever_the_arguments() {
        let registry = registry(BuiltinConfig::default());
        for args in [Value::Null, json!({"a": [1, 2]}), json!("text")] {
            assert_eq!(call(&registry, "noop", ctx(1), args).await, Ok(Value::Null));
        }
    }
}
