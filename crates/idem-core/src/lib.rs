//! idem's core: the domain (ids, jobs, tasks, triggers, retry policy), the backend seams (`Store`) and
//! the engines that drive them (scheduler, worker, maintenance).
//!
//! Invariant: nothing here depends on a database, broker or web crate, and nothing here reads the
//! wall clock except the engines' loops, which pass `now` into every pure function and store call.

pub mod broker;
pub mod completer;
pub mod dispatcher;
pub mod handler;
pub mod ids;
pub mod job;
pub mod locks;
pub mod maintenance;
pub mod metrics;
pub mod retry;
pub mod scheduler;
pub mod store;
pub mod task;
pub mod time;
pub mod trace;
pub mod trigger;
pub mod wakeups;
pub mod worker;
pub mod worker_info;

pub use handler::{Handler, Registry, TaskContext, TaskError};
pub use ids::{IdError, IdempotencyKey, JobId, QueueName, TaskId, TaskName, WorkerId};
pub use job::{FireOutcome, FireRecord, Job, JobSpec, JobState};
pub use store::{Store, StoreError};
pub use task::{Claim, ErrorInfo, Finish, NewTask, Submitted, Task, TaskState};
pub use trigger::Trigger;
pub use wakeups::Wakeups;
pub use worker_info::WorkerInfo;
