//! `/health`, `/health/live` and `/health/ready`.
//!
//! Invariant: `/health` and `/health/live` answer 200 while the process serves, whatever its
//! dependencies do; `/health/ready` answers 200 only when the store and every probe answer within
//! [`CHECK_TIMEOUT`], and otherwise 503 naming each failing component.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use idem_core::Store;
use serde::Serialize;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::error::Elapsed;
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::{AppState, Probe};

/// How long one component may take to answer a readiness check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A health answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `alive` or `ready`.
    pub status: &'static str,
    /// On `/health/ready`: each component (`store`, `broker`, `redis`) and its answer (`ok`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<String, String>>,
}

/// Always 200 while the process serves.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        checks: None,
    })
}

/// Liveness: always 200 while the process serves.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health {
        status: "alive",
        checks: None,
    })
}

/// Starts one check under the timeout, on its own task: the checks run concurrently, and a check
/// that panics is a failed component, not a failed request.
fn start<F>(fut: F) -> JoinHandle<Result<Result<(), String>, Elapsed>>
where
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    tokio::spawn(tokio::time::timeout(CHECK_TIMEOUT, fut))
}

/// What a component answered, as shown in `checks`.
fn answer(joined: Result<Result<Result<(), String>, Elapsed>, JoinError>) -> String {
    match joined {
        Ok(Ok(Ok(()))) => "ok".to_owned(),
        Ok(Ok(Err(e))) => e,
        Ok(Err(_)) => format!("no answer within {} s", CHECK_TIMEOUT.as_secs()),
        Err(_) => "check failed".to_owned(),
    }
}

/// Checks the store and every probe concurrently, each bounded by [`CHECK_TIMEOUT`]: each
/// component's name and its answer (`ok`, or why not). The readiness answer and the dependency
/// gauges ([`crate::dependencies`]) are both made from this.
pub(crate) async fn check_all(
    store: &Arc<dyn Store>,
    probes: &[Arc<dyn Probe>],
) -> BTreeMap<&'static str, String> {
    let store = store.clone();
    let mut pending = vec![(
        "store",
        start(async move { store.ping().await.map_err(|e| e.to_string()) }),
    )];
    for probe in probes {
        let probe = probe.clone();
        let name = probe.name();
        pending.push((name, start(async move { probe.check().await })));
    }
    let mut checks = BTreeMap::new();
    for (name, handle) in pending {
        checks.insert(name, answer(handle.await));
    }
    checks
}

/// Readiness: 200 when the store and every configured dependency (broker, Redis) answer.
#[utoipa::path(
    get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "A dependency is down; `checks` shows each", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ready(State(st): State<AppState>) -> Result<Json<Health>, ApiError> {
    let checks: BTreeMap<String, String> = check_all(&st.store, &st.probes)
        .await
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let failing: Vec<&str> = checks
        .iter()
        .filter(|(_, v)| v.as_str() != "ok")
        .map(|(k, _)| k.as_str())
        .collect();
    if failing.is_empty() {
        return Ok(Json(Health {
            status: "ready",
            checks: Some(checks),
        }));
    }
    let detail = format!("not ready: {} unavailable", failing.join(", "));
    tracing::warn!(?checks, "readiness check failed");
    Err(ApiError::unavailable(detail, Some(checks)))
}
