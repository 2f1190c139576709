//! The HTTP API over a real SQLite store in a fresh temporary directory per test, driven in process
//! with `tower::ServiceExt::oneshot`. No worker runs here: tasks stay queued unless a test moves them
//! through the store directly.

#[path = "api/common.rs"]
mod common;
#[path = "api/errors.rs"]
mod errors;
#[path = "api/jobs.rs"]
mod jobs;
#[path = "api/ops.rs"]
mod ops;
#[path = "api/tasks.rs"]
mod tasks;
