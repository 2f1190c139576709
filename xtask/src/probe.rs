//! Recovery probes: after a fault ends, one small keyed task after another is submitted until one
//! completes end to end (accepted by an api, run by a worker, answered by the receiver). The time
//! from the fault's end to that completion is the recovery time.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{http_task, Client};
use crate::receiver::Receiver;

/// Milliseconds from `since` to the first probe that completed, or `None` within `limit`.
pub async fn recovery(
    client: &Client,
    receiver: &Receiver,
    name: &str,
    since: Instant,
    limit: Duration,
) -> Option<f64> {
    let deadline = since + limit;
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let key = format!("{name}-probe{n}");
        let request = http_task(&receiver.hook, &key, 0, json!({"max_retries": 10}));
        let left = deadline.saturating_duration_since(Instant::now());
        let op = client.submit_until_settled(n, &key, &request, left).await;
        if !op.outcome.accepted() {
            continue;
        }
        // Wait for this probe for up to 30 s, then try a fresh one (it may be stuck behind a
        // partitioned worker) — the stuck one still has to complete for the run to pass.
        let wait_until = (Instant::now() + Duration::from_secs(30)).min(deadline);
        while Instant::now() < wait_until {
            if receiver.answered(&key).is_some() {
                return Some(since.elapsed().as_secs_f64() * 1e3);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    None
}
