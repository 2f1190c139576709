//! The public handler API: a task is a name bound to an `async fn(ctx, args) -> Result<T, TaskError>`.
//! The built-in tasks are registered through this same API.
//!
//! Invariant: a handler sees its arguments already decoded into its own type; arguments that do not
//! decode fail the attempt for good (`bad_args`), since retrying cannot fix them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::ids::{IdempotencyKey, JobId, TaskId, TaskName};
use crate::task::ErrorInfo;

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub task_id: TaskId,
    /// The attempt number (1 for the first), also the fencing token.
    pub attempt: i32,
    pub idempotency_key: Option<IdempotencyKey>,
    pub job_id: Option<JobId>,
    /// How long this attempt may run.
    pub timeout: Duration,
    /// Cancelled when the task is cancelled, times out or the worker shuts down; a handler that holds
    /// resources outside its future (a child process) watches it. Dropping the future also stops it.
    pub cancel: CancellationToken,
}

/// Why an attempt failed, and what happens next.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// Retry with the standard backoff, if retries are left.
    #[error("{0:?}")]
    Retry(ErrorInfo),
    /// Retry no sooner than after this delay, if retries are left.
    #[error("{error:?} (retry after {after:?})")]
    RetryAfter { after: Duration, error: ErrorInfo },
    /// Fail for good: retrying cannot help.
    #[error("{0:?}")]
    GiveUp(ErrorInfo),
}

impl TaskError {
    pub fn retry(kind: &str, message: impl Into<String>) -> Self {
        TaskError::Retry(ErrorInfo::new(kind, message))
    }
    pub fn give_up(kind: &str, message: impl Into<String>) -> Self {
        TaskError::GiveUp(ErrorInfo::new(kind, message))
    }
    pub fn info(&self) -> &ErrorInfo {
        match self {
            TaskError::Retry(e) | TaskError::GiveUp(e) => e,
            TaskError::RetryAfter { error, .. } => error,
        }
    }
}

/// An object-safe handler. Most code registers closures with [`Registry::register`] instead.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, ctx: TaskContext, args: Value) -> BoxFuture<'static, Result<Value, TaskError>>;
}

struct FnHandler<F, A, T> {
    f: F,
    _types: std::marker::PhantomData<fn(A) -> T>,
}

impl<F, Fut, A, T> Handler for FnHandler<F, A, T>
where
    F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, TaskError>> + Send + 'static,
    A: DeserializeOwned + Send + 'static,
    T: Serialize + 'static,
{
    fn call(&self, ctx: TaskContext, args: Value) -> BoxFuture<'static, Result<Value, TaskError>> {
        let args = match serde_json::from_value::<A>(args) {
            Ok(a) => a,
            Err(e) => {
                let err = TaskError::give_up("bad_args", format!("arguments do not match: {e}"));
                return Box::pin(async move { Err(err) });
            }
        };
        let fut = (self.f)(ctx, args);
        Box::pin(async move {
            let out = fut.await?;
            serde_json::to_value(out)
                .map_err(|e| TaskError::give_up("bad_result", format!("result is not JSON: {e}")))
        })
    }
}

/// The registered tasks, by name.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<TaskName, Arc<dyn Handler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a typed handler under `name`, replacing any earlier one.
    ///
    /// # Panics
    /// When `name` is not a valid task name: a programming error, found at start-up.
    pub fn register<F, Fut, A, T>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, TaskError>> + Send + 'static,
        A: DeserializeOwned + Send + 'static,
        T: Serialize + 'static,
    {
        self.register_handler(
            name,
            Arc::new(FnHandler {
                f,
                _types: std::marker::PhantomData,
            }),
        )
    }

    /// Registers an object-safe handler.
    pub fn register_handler(&mut self, name: &str, h: Arc<dyn Handler>) -> &mut Self {
        let name = TaskName::try_from(name).expect("task names are [A-Za-z0-9_.:-]{1,128}");
        self.handlers.insert(name, h);
        self
    }

    pub fn get(&self, name: &TaskName) -> Option<Arc<dyn Handler>> {
        self.handlers.get(name).cloned()
    }

    pub fn contains(&self, name: &TaskName) -> bool {
        self.handlers.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(|k| k.as_str())
    }
}
