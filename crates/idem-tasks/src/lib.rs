//! idem's built-in tasks — `noop`, `echo`, `sleep`, `fail`, `http` and `shell` — registered
//! through the same public [`Registry`] API that user handlers use, one module per task.
//!
//! Invariant: nothing here is special to the engine; each built-in is a typed closure whose
//! arguments are decoded (and refused as `bad_args`) before it runs, and whose failures say what
//! happens next through [`idem_core::TaskError`].

use idem_core::Registry;

mod echo;
mod fail;
mod http;
mod noop;
mod shell;
mod sleep;

/// Settings the built-ins need (from the binary's configuration).
#[derive(Debug, Clone, Default)]
pub struct BuiltinConfig {
    /// `IDEM_HTTP_ALLOW_PRIVATE`: let the `http` task reach loopback, private, link-local and
    /// cloud-metadata addresses. Off by default, so a submitted task cannot probe the network the
    /// worker sits in.
    pub http_allow_private: bool,
    /// `IDEM_SHELL_ALLOW`: the program names or absolute paths the `shell` task may run, compared
    /// exactly with the `program` argument. Empty means the `shell` task refuses everything.
    pub shell_allow: Vec<String>,
}

/// Registers noop, echo, sleep, fail, http and shell on the registry through the public API.
pub fn register_builtins(registry: &mut Registry, cfg: BuiltinConfig) {
    noop::register(registry);
    echo::register(registry);
    sleep::register(registry);
    fail::register(registry);
    http::register(registry, cfg.http_allow_private);
    shell::register(registry, cfg.shell_allow);
}

/// Truncates `bytes` to at most `limit` bytes and decodes it, replacing invalid UTF-8 (including a
/// character cut in half at the limit).
fn lossy_prefix(bytes: &[u8], limit: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]).into_owned()
}

/// The most output the `http` and `shell` tasks keep from one stream: results live in the store.
const OUTPUT_LIMIT: usize = 64 * 1024;

#[cfg(test)]
mod test_support {
    //! Calls the built-ins the way the worker does: through the registry, by name.

    use std::time::Duration;

    use idem_core::{IdempotencyKey, Registry, TaskContext, TaskError, TaskId, TaskName};
    use serde_json::Value;
    use tokio_util::sync::CancellationToken;

    use crate::{register_builtins, BuiltinConfig};

    pub(crate) fn registry(cfg: BuiltinConfig) -> Registry {
        let mut registry = Registry::new();
        register_builtins(&mut registry, cfg);
        registry
    }

    pub(crate) fn ctx(attempt: i32) -> TaskContext {
        TaskContext {
            task_id: TaskId::generate(),
            attempt,
            idempotency_key: None,
            job_id: None,
            timeout: Duration::from_secs(60),
            cancel: CancellationToken::new(),
        }
    }

    pub(crate) fn ctx_with_key(attempt: i32, key: &str) -> TaskContext {
        TaskContext {
            idempotency_key: Some(IdempotencyKey::try_from(key.to_owned()).unwrap()),
            ..ctx(attempt)
        }
    }

    pub(crate) async fn call(
        registry: &Registry,
        task: &str,
        ctx: TaskContext,
        args: Value,
    ) -> Result<Value, TaskError> {
        let name = TaskName::try_from(task).unwrap();
        let handler = registry.get(&name).expect("task is registered");
        handler.call(ctx, args).await
    }

    /// Asserts `err` is a give-up of `kind`.
    #[track_caller]
    pub(crate) fn assert_gives_up(err: &TaskError, kind: &str) {
        match err {
            TaskError::GiveUp(info) => assert_eq!(info.kind, kind, "{err:?}"),
            other => panic!("expected GiveUp({kind}), got {other:?}"),
        }
    }

    /// Asserts `err` is a plain retry of `kind`.
    #[track_caller]
    pub(crate) fn assert_retries(err: &TaskError, kind: &str) {
        match err {
            TaskError::Retry(info) => assert_eq!(info.kind, kind, "{err:?}"),
            other => panic!("expected Retry({kind}), got {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::registry;
    use crate::BuiltinConfig;

    #[test]
    fn every_builtin_is_registered() {
        let registry = registry(BuiltinConfig::default());
        let names: Vec<&str> = registry.names().collect();
        for task in ["echo", "fail", "http", "noop", "shell", "sleep"] {
            assert!(names.contains(&task), "{task} missing from {names:?}");
        }
    }

    #[test]
    fn lossy_prefix_cuts_at_the_limit_without_panicking_mid_character() {
        assert_eq!(super::lossy_prefix(b"hello", 3), "hel");
        assert_eq!(super::lossy_prefix(b"hi", 10), "hi");
        // "é" is two bytes; cutting after the first leaves a replacement character, not a panic.
        assert_eq!(super::lossy_prefix("é".as_bytes(), 1), "\u{FFFD}");
    }
}
