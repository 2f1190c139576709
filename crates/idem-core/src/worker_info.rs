//! What a worker process reports about itself in its heartbeat (`GET /api/v1/workers`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{QueueName, WorkerId};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    #[schema(value_type = String)]
    pub id: WorkerId,
    pub host: String,
    #[schema(value_type = Vec<String>)]
    pub queues: Vec<QueueName>,
    pub concurrency: u32,
    /// Tasks running at the last heartbeat.
    pub running: u32,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
}
