//! Wake-ups between processes that share one database: `pg_notify` in the committing transaction,
//! and a listener per store that turns notifications into the local [`Wakeups`].
//!
//! Invariants: a notification is sent by the transaction whose commit it announces, so it is
//! delivered only if (and after) that commit; the listener LISTENs before the store is handed out,
//! so no commit made after `connect` returns goes unheard; after a lost connection it fires every
//! wake-up once, since notifications sent meanwhile are gone; it stops when the last clone of the
//! store is dropped.

use std::sync::Arc;
use std::time::Duration;

use idem_core::Wakeups;
use sqlx::postgres::{PgListener, PgNotification};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub(super) use crate::wake::Signal;

/// A channel name is an identifier: at most 63 bytes, longer ones are refused by `pg_notify`.
const MAX_CHANNEL: usize = 63;

/// The channel names of one store: `idem_jobs`, `idem_tasks`, `idem_finished`, `idem_cancel`, each
/// prefixed with `{schema}_` when the store lives in its own schema, so that stores in different
/// schemas of one database do not wake each other.
#[derive(Debug, Clone)]
pub(super) struct Channels {
    jobs: String,
    tasks: String,
    finished: String,
    cancel: String,
}

impl Channels {
    pub(super) fn new(schema: Option<&str>) -> Self {
        let name = |kind: &str| match schema {
            None => kind.to_owned(),
            Some(schema) => {
                // Schema names are ASCII (checked by `connect`), so any byte is a char boundary. A
                // long name is cut: two schemas sharing a 49-byte prefix then share spurious
                // wake-ups, which cost a query each and nothing else.
                let keep = schema.len().min(MAX_CHANNEL - kind.len() - 1);
                format!("{}_{kind}", &schema[..keep])
            }
        };
        Self {
            jobs: name("idem_jobs"),
            tasks: name("idem_tasks"),
            finished: name("idem_finished"),
            cancel: name("idem_cancel"),
        }
    }

    fn all(&self) -> [&str; 4] {
        [&self.jobs, &self.tasks, &self.finished, &self.cancel]
    }

    /// The channel and payload that announce a signal.
    pub(super) fn notification(&self, signal: Signal) -> (String, String) {
        match signal {
            Signal::Jobs => (self.jobs.clone(), String::new()),
            Signal::Tasks => (self.tasks.clone(), String::new()),
            Signal::Finished => (self.finished.clone(), String::new()),
            Signal::Cancelled(id) => (self.cancel.clone(), id.to_string()),
        }
    }

    /// The signal a notification announces; `None` for a foreign or malformed one.
    fn signal(&self, channel: &str, payload: &str) -> Option<Signal> {
        if channel == self.jobs {
            Some(Signal::Jobs)
        } else if channel == self.tasks {
            Some(Signal::Tasks)
        } else if channel == self.finished {
            Some(Signal::Finished)
        } else if channel == self.cancel {
            payload.parse().ok().map(Signal::Cancelled)
        } else {
            None
        }
    }
}

/// Starts listening on the store's channels and spawns the loop that fires `wakeups`. Returns once
/// LISTEN has run, so every notification committed afterwards reaches the loop. `pool` is the
/// listener's own one-connection pool, so it never takes a connection from the store's queries.
pub(super) async fn listen(
    pool: PgPool,
    channels: Channels,
    wakeups: Arc<Wakeups>,
    stop: CancellationToken,
) -> Result<(), sqlx::Error> {
    let listener = subscribe(&pool, &channels).await?;
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = run(listener, &pool, &channels, &wakeups) => {}
        }
        pool.close().await;
    });
    Ok(())
}

/// A listener on a fresh connection of `pool`, LISTENing on every channel.
async fn subscribe(pool: &PgPool, channels: &Channels) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // The pool is the listener's own; closing it is `listen`'s last step, not a reason to stop.
    listener.ignore_pool_close_event(true);
    listener.listen_all(channels.all()).await?;
    Ok(listener)
}

/// The first wait after a lost connection; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Forwards notifications for ever, reconnecting with backoff when the connection drops.
async fn run(mut listener: PgListener, pool: &PgPool, channels: &Channels, wakeups: &Wakeups) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => dispatch(&n, channels, wakeups),
            // The connection dropped and `PgListener` has already reconnected and LISTENs again.
            Ok(None) => {
                tracing::warn!("PostgreSQL listener reconnected; notifications may have been lost");
                fire_all(wakeups);
            }
            // The connection failed in a way `PgListener` does not recover from by itself (or its
            // reconnect failed): start over on a new connection.
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL listener lost its connection; reconnecting");
                drop(listener);
                listener = resubscribe(pool, channels).await;
                tracing::info!("PostgreSQL listener reconnected");
                fire_all(wakeups);
            }
        }
    }
}

/// Retries with backoff until a new listener LISTENs again.
async fn resubscribe(pool: &PgPool, channels: &Channels) -> PgListener {
    let mut backoff = MIN_BACKOFF;
    loop {
        tokio::time::sleep(backoff).await;
        match subscribe(pool, channels).await {
            Ok(listener) => return listener,
            Err(e) => tracing::debug!(error = %e, "PostgreSQL listener still disconnected"),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn dispatch(n: &PgNotification, channels: &Channels, wakeups: &Wakeups) {
    match channels.signal(n.channel(), n.payload()) {
        Some(signal) => signal.fire(wakeups),
        None => tracing::debug!(channel = n.channel(), "ignored a foreign notification"),
    }
}

/// What a lost connection may have hidden: every kind of change, so each loop looks again. (A lost
/// cancellation is found by the worker's lease renewal, which reports cancelled attempts as lost.)
fn fire_all(wakeups: &Wakeups) {
    wakeups.jobs_changed();
    wakeups.tasks_ready();
    wakeups.task_finished();
}

#[cfg(test)]
mod tests {
    use super::*;
    use idem_core::TaskId;

    #[test]
    fn channels_are_prefixed_by_schema_and_fit_an_identifier() {
        let plain = Channels::new(None);
        assert_eq!(
            plain.all(),
            ["idem_jobs", "idem_tasks", "idem_finished", "idem_cancel"]
        );
        let long = "s".repeat(63);
        let prefixed = Channels::new(Some(&long));
        for c in prefixed.all() {
            assert!(c.len() <= MAX_CHANNEL, "{c}");
            assert!(c.starts_with("sss"), "{c}");
        }
        assert_eq!(Channels::new(Some("t1")).tasks, "t1_idem_tasks");
    }

    #[test]
    fn notifications_map_back_to_their_signals() {
        let ch = Channels::new(Some("s"));
        let id = TaskId::generate();
        for signal in [
            Signal::Jobs,
            Signal::Tasks,
            Signal::Finished,
            Signal::Cancelled(id),
        ] {
            let (channel, payload) = ch.notification(signal);
            assert_eq!(ch.signal(&channel, &payload), Some(signal));
        }
        assert_eq!(
            ch.signal("idem_tasks", ""),
            None,
            "another schema's channel"
        );
        assert_eq!(ch.signal(&ch.cancel, "not-a-uuid"), None);
    }
}
