//! Group commit of single-task submissions: concurrent one-item `submit` calls (the single-task
//! endpoint under many connections) are written by one task in one transaction, so they share one
//! `BEGIN IMMEDIATE`, one commit and one disk flush instead of paying one each, and are decided and
//! written set-wise (`submit::submit_group`: a few statements for the group, not a few per
//! submission). A lone keyless submission is one script (`tasks::submit_keyless_script`).
//!
//! Invariant: each submission gets exactly the answer a lone `submit` would give and nothing is
//! acknowledged before its commit. A key conflict is decided before its submission writes anything,
//! so it leaves the others' writes alone; any other error rolls the whole group back and every
//! caller of the group gets it (nothing of the group was written, and the caller may retry).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use idem_core::{NewTask, StoreError, Submitted, Wakeups};
use tokio::sync::{mpsc, oneshot};

use super::writer::{self, Writer};
use super::{submit, tasks};
use crate::{db_err, wake};

/// Submissions written in one transaction at most.
const MAX_GROUP: usize = 256;

struct Pending {
    task: NewTask,
    now: DateTime<Utc>,
    reply: oneshot::Sender<Result<Submitted, StoreError>>,
}

/// The handle one-item submissions go through; the writing task ends when the last handle drops.
#[derive(Clone)]
pub(super) struct Submitter {
    tx: mpsc::Sender<Pending>,
}

impl Submitter {
    /// Starts the writing task (needs a Tokio runtime).
    pub(super) fn start(writer: Writer, wakeups: Arc<Wakeups>) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(run(writer, wakeups, rx));
        Self { tx }
    }

    pub(super) async fn submit(
        &self,
        task: NewTask,
        now: DateTime<Utc>,
    ) -> Result<Submitted, StoreError> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the submission writer stopped".into());
        self.tx
            .send(Pending { task, now, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(writer: Writer, wakeups: Arc<Wakeups>, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        metrics::histogram!(idem_core::metrics::SUBMIT_GROUP_SIZE).record(group.len() as f64);
        match write(&writer, &mut group).await {
            Ok(results) => {
                for s in wake::after_submit(results.iter().filter_map(|r| r.as_ref().ok())) {
                    s.fire(&wakeups);
                }
                for (p, r) in group.into_iter().zip(results) {
                    let _ = p.reply.send(r);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for p in group {
                    let _ = p
                        .reply
                        .send(Err(StoreError::Unavailable(msg.clone().into())));
                }
            }
        }
    }
}

/// One transaction for the group; the outer error means nothing was written.
async fn write(
    writer: &Writer,
    group: &mut [Pending],
) -> Result<Vec<Result<Submitted, StoreError>>, StoreError> {
    let mut conn = writer.lock().await?;
    if let [lone] = group {
        if lone.task.idempotency.is_none() {
            let s = tasks::submit_keyless_script(&mut conn, &lone.task, lone.now).await?;
            return Ok(vec![Ok(s)]);
        }
    }
    let mut tx = writer::begin(&mut conn).await?;
    let items: Vec<_> = group.iter().map(|p| (&p.task, p.now)).collect();
    // An error other than a key conflict rolls the group back when `tx` drops.
    let out = submit::submit_group(&mut tx, &items).await?;
    tx.commit().await.map_err(db_err)?;
    Ok(out)
}
