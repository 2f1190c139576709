//! Announcing commits to the other processes: the signals of committed store methods are sent with
//! `pg_notify` by one task, after the commit, many commits' signals in one statement.
//!
//! Why not inside the data transaction: PostgreSQL holds one database-wide lock from a notifying
//! transaction's pre-commit until its commit record is flushed, so notifying commits queue behind
//! each other's disk flushes — measured as `Lock:object` waits on `COMMIT` that capped outcome
//! writes from several workers. Sent afterwards, the data commits flush in parallel and one small
//! notifying transaction carries a whole burst of signals (duplicates merged).
//!
//! Invariant: a signal is sent only after its commit, never before; a signal lost to a crash or a
//! failed send costs the other processes their idle bound (every waiting loop also polls), nothing
//! else — wake-ups are hints, the store is the truth.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::mpsc;

use super::notify::{Channels, Signal};

/// Signals sent in one statement at most.
const MAX_BURST: usize = 1024;

/// The handle commits hand their signals to; the sending task ends when the last handle drops.
pub(super) struct Announcer {
    tx: mpsc::UnboundedSender<Signal>,
}

impl Announcer {
    /// Starts the sending task (needs a Tokio runtime).
    pub(super) fn start(pool: PgPool, channels: Arc<Channels>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, channels, rx));
        Self { tx }
    }

    /// Queues the signals of a commit that has happened.
    pub(super) fn announce(&self, signals: &[Signal]) {
        for s in signals {
            // The task is gone only with its runtime; the other processes then poll.
            let _ = self.tx.send(*s);
        }
    }
}

async fn run(pool: PgPool, channels: Arc<Channels>, mut rx: mpsc::UnboundedReceiver<Signal>) {
    while let Some(first) = rx.recv().await {
        let mut burst = vec![first];
        while burst.len() < MAX_BURST {
            match rx.try_recv() {
                Ok(s) if burst.contains(&s) => {}
                Ok(s) => burst.push(s),
                Err(_) => break,
            }
        }
        let (names, payloads): (Vec<String>, Vec<String>) =
            burst.iter().map(|s| channels.notification(*s)).unzip();
        let sent =
            sqlx::query("SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS n(c, p)")
                .bind(names)
                .bind(payloads)
                .execute(&pool)
                .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, signals = burst.len(), "could not announce commits; other processes will poll");
        }
    }
}
