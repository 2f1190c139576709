//! `GET /api/v1/workers`: the worker processes that sent a heartbeat recently.
//!
//! Invariant: the list is what the store holds; workers silent for too long are pruned by the
//! maintenance service, not filtered here.

use axum::extract::State;
use axum::Json;
use idem_core::WorkerInfo;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::AppState;

/// The live workers.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    pub items: Vec<WorkerInfo>,
}

/// Lists the workers: id, host, queues, concurrency, running tasks and last heartbeat.
#[utoipa::path(
    get, path = "/api/v1/workers", tag = "workers",
    responses(
        (status = 200, body = WorkerList),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(State(st): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    let items = st.store.list_workers().await?;
    Ok(Json(WorkerList { items }))
}
