//! Group commit of attempt outcomes: the worker's attempts hand their outcomes to one completer
//! task, which writes whatever has queued up in one store transaction (`Store::finish_many`). Under
//! load, many completions share one disk flush; when idle, a single outcome is written at once.
//!
//! Invariant: every outcome gets its own answer (fenced or written), exactly as a lone `finish`
//! would; batching changes how many commits there are, never what is committed. Each group's store
//! call is bounded: a store that stops answering gives an `Unavailable` answer (the attempt retries
//! its outcome) instead of holding every later completion.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Lease, Store, StoreError};
use crate::task::{Finish, Task};

/// Outcomes written in one transaction at most.
pub const MAX_GROUP: usize = 512;

struct Completion {
    lease: Lease,
    finish: Finish,
    reply: oneshot::Sender<Result<Task, StoreError>>,
}

/// The handle attempts send their outcomes through; the writing task ends when it is dropped.
pub struct Completer {
    tx: mpsc::Sender<Completion>,
}

impl Completer {
    /// Starts the writing task (needs a Tokio runtime); a group's write is given up after `bound`.
    pub fn start(store: Arc<dyn Store>, bound: Duration) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(run(store, rx, bound));
        Self { tx }
    }

    /// Records one outcome; returns as soon as its group is committed.
    pub async fn finish(&self, lease: Lease, finish: Finish) -> Result<Task, StoreError> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the completer stopped".into());
        self.tx
            .send(Completion {
                lease,
                finish,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Completion>, bound: Duration) {
    while let Some(first) = rx.recv().await {
        // One yield lets the attempts that are ready to run (typically the rest of a claimed
        // batch) hand in their outcomes first, so they join this group: microseconds of latency
        // for a commit shared by many.
        tokio::task::yield_now().await;
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        metrics::histogram!(crate::metrics::COMPLETION_GROUP_SIZE).record(group.len() as f64);
        let items = group.iter().map(|c| (c.lease, c.finish.clone())).collect();
        let write = async {
            let now = match store.now().await {
                Ok(now) => now,
                Err(_) => crate::time::trunc_ms(Utc::now()),
            };
            store.finish_many(items, now).await
        };
        // A write that timed out may still have committed; its retry is then refused as fenced,
        // which the attempt treats as already recorded.
        let written = crate::store::bounded(bound, "the outcome write", write).await;
        match written {
            Ok(results) => {
                for (c, r) in group.into_iter().zip(results) {
                    let _ = c.reply.send(r);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for c in group {
                    let _ = c
                        .reply
                        .send(Err(StoreError::Unavailable(msg.clone().into())));
                }
            }
        }
    }
}
