//! The metrics catalogue in code: every `idem_*` name, its type and its HELP text (`docs/metrics.md`
//! is the same list in prose), the histogram buckets, and the fixed label values that are exported
//! at 0 from the start.
//!
//! Invariant: every series idem records is named by a constant here and described by [`describe`],
//! so the exporter prints a `# HELP` line for each; `crates/idem/tests/monitoring.rs` checks that this
//! list, the catalogue and what a running process exports agree.
//!
//! Label values come from bounded sets only (task names of the registry, configured queues, route
//! templates, states, outcomes); the one per-job label exists only when the operator opts in.

/// The type of a metric, as Prometheus prints it in `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One entry of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// The `# HELP` text: the metric's meaning in one line.
    pub help: &'static str,
}

// Submissions (API processes).
pub const SUBMISSIONS_TOTAL: &str = "idem_submissions_total";
pub const SUBMISSION_REPLAYS_TOTAL: &str = "idem_submission_replays_total";
pub const SUBMISSION_KEY_CONFLICTS_TOTAL: &str = "idem_submission_key_conflicts_total";
pub const SUBMIT_GROUP_SIZE: &str = "idem_submit_group_size";
// Tasks.
pub const TASKS_TOTAL: &str = "idem_tasks_total";
pub const TASK_RETRIES_TOTAL: &str = "idem_task_retries_total";
pub const TASK_DURATION_SECONDS: &str = "idem_task_duration_seconds";
pub const TASK_QUEUE_WAIT_SECONDS: &str = "idem_task_queue_wait_seconds";
pub const TASKS_EXPIRED_TOTAL: &str = "idem_tasks_expired_total";
pub const TASKS_CANCELLED_TOTAL: &str = "idem_tasks_cancelled_total";
// Leases and deliveries.
pub const LEASES_REAPED_TOTAL: &str = "idem_leases_reaped_total";
pub const ATTEMPTS_STOPPED_UNRENEWED_TOTAL: &str = "idem_attempts_stopped_unrenewed_total";
pub const FINISH_FENCED_TOTAL: &str = "idem_finish_fenced_total";
pub const DELIVERIES_DROPPED_TOTAL: &str = "idem_deliveries_dropped_total";
pub const CLAIM_BATCH_SIZE: &str = "idem_claim_batch_size";
pub const COMPLETION_GROUP_SIZE: &str = "idem_completion_group_size";
pub const DISPATCHED_TOTAL: &str = "idem_dispatched_total";
// Workers.
pub const WORKER_SLOTS: &str = "idem_worker_slots";
pub const WORKERS_BUSY: &str = "idem_workers_busy";
pub const WORKERS_ALIVE: &str = "idem_workers_alive";
pub const WORKER_SLOTS_ALIVE: &str = "idem_worker_slots_alive";
// Queues.
pub const QUEUE_DEPTH: &str = "idem_queue_depth";
// Scheduler.
pub const SCHEDULER_FIRES_TOTAL: &str = "idem_scheduler_fires_total";
pub const SCHEDULER_LATENESS_SECONDS: &str = "idem_scheduler_lateness_seconds";
pub const SCHEDULER_PASS_DURATION_SECONDS: &str = "idem_scheduler_pass_duration_seconds";
pub const JOBS_QUARANTINED_TOTAL: &str = "idem_jobs_quarantined_total";
pub const JOB_FIRES_TOTAL: &str = "idem_job_fires_total";
pub const JOB_LATENESS_SECONDS: &str = "idem_job_lateness_seconds";
// Locks and leadership.
pub const LOCK_ACQUISITIONS_TOTAL: &str = "idem_lock_acquisitions_total";
pub const LOCK_LEASES_LOST_TOTAL: &str = "idem_lock_leases_lost_total";
pub const LEADER: &str = "idem_leader";
pub const LEADER_TERM: &str = "idem_leader_term";
// Dependencies.
pub const DEPENDENCY_UP: &str = "idem_dependency_up";
pub const DEPENDENCY_RECONNECTS_TOTAL: &str = "idem_dependency_reconnects_total";
// HTTP.
pub const HTTP_REQUESTS_TOTAL: &str = "idem_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "idem_http_request_duration_seconds";
// Process.
pub const BUILD_INFO: &str = "idem_build_info";

/// Every metric idem records, with its HELP text.
pub const CATALOGUE: &[Metric] = &[
    counter(SUBMISSIONS_TOTAL, "Tasks created by a submission (single or batch)."),
    counter(SUBMISSION_REPLAYS_TOTAL, "Submissions answered with the task an earlier submission of the same idempotency key made."),
    counter(SUBMISSION_KEY_CONFLICTS_TOTAL, "Submissions refused because their idempotency key is held by a different request (422)."),
    histogram(SUBMIT_GROUP_SIZE, "One-item submissions decided together in one SQLite transaction (group commit)."),
    counter(TASKS_TOTAL, "Attempts whose outcome the store took and that ended the task in a final state (succeeded or failed)."),
    counter(TASK_RETRIES_TOTAL, "Attempts whose failure the store took and that left the task retrying."),
    histogram(TASK_DURATION_SECONDS, "How long an attempt's handler ran, in seconds."),
    histogram(TASK_QUEUE_WAIT_SECONDS, "From the moment a task was due (its eta, or its submission) to the start of its attempt, in seconds."),
    counter(TASKS_EXPIRED_TOTAL, "Tasks that passed their expires_at before they ran (maintenance leader)."),
    counter(TASKS_CANCELLED_TOTAL, "Tasks cancelled through the API."),
    counter(LEASES_REAPED_TOTAL, "Tasks whose worker's lease expired, taken back by the maintenance leader and queued again or failed."),
    counter(ATTEMPTS_STOPPED_UNRENEWED_TOTAL, "Attempts a worker stopped itself because it could not renew their lease in time."),
    counter(FINISH_FENCED_TOTAL, "Outcomes the store refused because the attempt's lease had been taken over (stale fence)."),
    counter(DELIVERIES_DROPPED_TOTAL, "Broker deliveries dropped by the claim: a duplicate, or a task already claimed or finished."),
    histogram(CLAIM_BATCH_SIZE, "Tasks claimed by one claim statement."),
    histogram(COMPLETION_GROUP_SIZE, "Outcomes written by one store transaction (group commit)."),
    counter(DISPATCHED_TOTAL, "Queued tasks published to the broker from the outbox (0 without a broker)."),
    gauge(WORKER_SLOTS, "Tasks this worker process may run at once (IDEM_WORKER_CONCURRENCY)."),
    gauge(WORKERS_BUSY, "Slots of this worker process running an attempt now."),
    gauge(WORKERS_ALIVE, "Worker processes whose last heartbeat the store holds is under 5 minutes old, read at each scrape."),
    gauge(WORKER_SLOTS_ALIVE, "The slots of the alive workers, summed, read at each scrape."),
    gauge(QUEUE_DEPTH, "Unfinished tasks per queue and state, read from the store at each scrape."),
    counter(SCHEDULER_FIRES_TOTAL, "Decided slots by outcome: fired, missed, skipped_overlap, key_conflict."),
    histogram(SCHEDULER_LATENESS_SECONDS, "For each fired slot, from its scheduled time to the moment its task was made, in seconds."),
    histogram(SCHEDULER_PASS_DURATION_SECONDS, "How long one fire pass took, in seconds."),
    counter(JOBS_QUARANTINED_TOTAL, "Jobs set aside because their trigger or spec could not be decoded or planned."),
    counter(JOB_FIRES_TOTAL, "Decided slots per job and outcome (IDEM_METRICS_JOB_LABELS=true)."),
    histogram(JOB_LATENESS_SECONDS, "Lateness of fired slots per job, in seconds (IDEM_METRICS_JOB_LABELS=true)."),
    counter(LOCK_ACQUISITIONS_TOTAL, "Attempts to take a lock: acquired, contended (another process holds it), error."),
    counter(LOCK_LEASES_LOST_TOTAL, "Held locks this process lost: its extension was refused or failed."),
    gauge(LEADER, "1 while this process holds the lock, else 0."),
    gauge(LEADER_TERM, "The fencing term of the lock this process holds; 0 when it holds none."),
    gauge(DEPENDENCY_UP, "1 when the last check (every 5 s) of the dependency answered, else 0."),
    counter(DEPENDENCY_RECONNECTS_TOTAL, "Connections to the broker or Redis found working again after a loss."),
    counter(HTTP_REQUESTS_TOTAL, "API requests answered, by method, route template and status."),
    histogram(HTTP_REQUEST_DURATION_SECONDS, "From an API request's arrival to its answer, in seconds (a long-poll's wait included)."),
    gauge(BUILD_INFO, "Always 1; labels name the version and the role of this process."),
];

const fn counter(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        help,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        help,
    }
}

const fn histogram(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Histogram,
        help,
    }
}

/// Buckets of every duration histogram (`*_seconds`): 1 ms to 300 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets of every size histogram (`*_size`): 1 to 1000 items.
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// The `state` values of [`TASKS_TOTAL`]: the final states an attempt can end a task in.
pub const FINAL_STATES: [&str; 2] = ["succeeded", "failed"];

/// The `outcome` values of [`LOCK_ACQUISITIONS_TOTAL`].
pub const LOCK_OUTCOMES: [&str; 3] = ["acquired", "contended", "error"];

/// Gives every metric of the catalogue its HELP text in the installed recorder. Call once, after
/// the recorder is installed (before, descriptions go nowhere).
pub fn describe() {
    for m in CATALOGUE {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_typed_by_their_suffix() {
        let mut seen = std::collections::BTreeSet::new();
        for m in CATALOGUE {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("idem_"), "{}", m.name);
            assert!(!m.help.is_empty() && !m.help.contains('\n'), "{}", m.name);
            if m.name.ends_with("_total") {
                assert_eq!(m.kind, Kind::Counter, "{}", m.name);
            }
            if m.name.ends_with("_seconds") || m.name.ends_with("_size") {
                assert_eq!(m.kind, Kind::Histogram, "{}", m.name);
            }
        }
    }
}
