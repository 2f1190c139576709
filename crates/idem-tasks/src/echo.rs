//! `echo`: returns its arguments unchanged, so a round trip through submit, store and result can be
//! checked end to end.

use idem_core::{Registry, TaskContext, TaskError};
use serde_json::Value;

pub(crate) fn register(registry: &mut Registry) {
    registry.register("echo", |_ctx: TaskContext, args: Value| async move {
        Ok::<_, TaskError>(args)
    });
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::test_support::{call, ctx, registry};
    use crate::BuiltinConfig;

    #[tokio::test]
    async fn echo_returns_its_arguments() {
        let registry = registry(BuiltinConfig::default());
        for args in [
            Value::Null,
            json!({"a": [1, 2.5, "x"]}),
            json!("text"),
            json!(7),
        ] {
            assert_eq!(
                call(&registry, "echo", ctx(1), args.clone()).await,
                Ok(args)
            );
        }
    }
}
