//! The request timeout: every request is answered within `request_timeout` (a result long-poll
//! within its longest wait on top), with a 503 problem when the work behind it — a store that stopped
//! answering, a SQLite writer waiting on a lock — takes longer.
//!
//! Invariant: the handler's future is dropped at the bound, so an open store transaction rolls back;
//! a write whose commit was already sent may still land, which the answer says (a retry with the same
//! `Idempotency-Key` is then a replay).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::tasks::MAX_WAIT_SECONDS;
use crate::AppState;

pub(crate) async fn bound(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let mut limit = st.request_timeout;
    // A long-poll waits by design: its wait (at most MAX_WAIT_SECONDS) is not the store's slowness.
    if req.uri().path().ends_with("/result") {
        limit += std::time::Duration::from_secs_f64(MAX_WAIT_SECONDS);
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(limit = ?limit, "request timed out");
            ApiError::unavailable(
                format!(
                    "the request did not finish within {} s; a write may still have been applied \
                     (send it again with the same Idempotency-Key to find out)",
                    limit.as_secs_f64()
                ),
                None,
            )
            .into_response()
        }
    }
}
