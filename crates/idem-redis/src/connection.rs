//! The connection to Redis: options, key naming, and the one path every command takes, which bounds
//! its time, maps its error and notices a lost or recovered connection.
//!
//! Invariants: every key is `{key_prefix}{kind}:{name}`; every call answers within
//! [`OPERATION_TIMEOUT`] with a value or `LockError::Unavailable`, also while Redis is down — the
//! `ConnectionManager` reconnects in the background and later calls succeed once Redis is back; a
//! lost connection is logged once (warn) and its recovery once (info, and counted in
//! `idem_dependency_reconnects_total{dependency="redis"}`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem_core::locks::LockError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult};

use crate::scripts::Scripts;

/// How long one TCP connect (and handshake) to Redis may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long Redis may take to answer one command before the call fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect attempts after the first, per reconnection round. A call made during an outage waits
/// for the round in progress (the driver pauses 1 to 2 s before its first retry), so one retry rides
/// out a quick restart while a longer outage still fails calls within about 2 s; a call that finds
/// the round failed starts the next one, which is how the connection recovers once Redis is back.
const RECONNECT_RETRIES: usize = 1;
/// Upper bound on any one operation, reconnection included: whatever the driver does underneath, a
/// caller gets an answer in this time.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest TTL sent to Redis (about 35 years); larger values would overflow Redis's expiry clock.
const MAX_TTL_MS: u64 = 1 << 40;
/// Longest error detail passed on in `LockError::Unavailable`.
const MAX_MESSAGE_CHARS: usize = 160;

/// How to use a Redis server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Prepended to every key this crate writes (default `idem:`), so several deployments or tests
    /// can share one Redis database without seeing each other's keys.
    pub key_prefix: String,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            key_prefix: "idem:".to_owned(),
        }
    }
}

/// Locks and the idempotency cache, in Redis.
///
/// As `Locks`: a lease is the key `{prefix}lock:{name}` holding a random 128-bit token with a TTL;
/// its fencing token comes from `{prefix}fence:{name}`, a counter without TTL that is incremented in
/// the same script that takes the lock. The counter only stays monotonic while Redis keeps its data:
/// a Redis without persistence that restarts starts it again at 1.
///
/// As `IdempotencyCache`: `{prefix}idem:{key}` holds `"{fingerprint} {task_id}"` for the key's TTL.
/// The cache is only a fast path for replays — it may say "this key made task X", never "this key is
/// new": the store decides new keys, and a miss here means "ask the store".
///
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct RedisLocks {
    /// Multiplexed and self-reconnecting; cloned per call because commands take `&mut`.
    conn: ConnectionManager,
    /// Prepended to every key.
    prefix: Arc<str>,
    /// Prepared once so calls use `EVALSHA`.
    pub(crate) scripts: Arc<Scripts>,
    /// Whether the last call reached Redis: flips once on loss and once on recovery, so each is
    /// logged once rather than on every failing call.
    reachable: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLocks")
            .field("prefix", &self.prefix)
            .field("reachable", &self.reachable.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisLocks {
    /// Connects to the Redis at `url` (`redis://[:password@]host[:port][/db]`, or `rediss://`).
    /// Fails when the URL is invalid or Redis does not answer.
    pub async fn connect(url: &str, opts: RedisOptions) -> Result<Self, LockError> {
        let client = redis::Client::open(url)
            .map_err(|e| LockError::Unavailable(format!("invalid Redis URL: {}", describe(&e))))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECTION_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(RECONNECT_RETRIES);
        let conn = match tokio::time::timeout(
            OPERATION_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(LockError::Unavailable(describe(&e))),
            Err(_) => return Err(timed_out()),
        };
        Ok(Self {
            conn,
            prefix: opts.key_prefix.into(),
            scripts: Arc::new(Scripts::new()),
            reachable: Arc::new(AtomicBool::new(true)),
        })
    }

    /// A handle for one call.
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The key of `name` in the keyspace `kind` (`lock`, `fence`, `idem`).
    pub(crate) fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    /// Runs one Redis call: bounded by [`OPERATION_TIMEOUT`], its error mapped to
    /// `LockError::Unavailable`, and the connection's loss or recovery logged.
    pub(crate) async fn run<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, LockError> {
        match tokio::time::timeout(OPERATION_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!("Redis connection recovered");
                    metrics::counter!(idem_core::metrics::DEPENDENCY_RECONNECTS_TOTAL, "dependency" => "redis")
                        .increment(1);
                }
                Ok(value)
            }
            Ok(Err(e)) => {
                let message = describe(&e);
                if is_connection_error(&e) {
                    self.lost(&message);
                }
                Err(LockError::Unavailable(message))
            }
            Err(_) => {
                let error = timed_out();
                self.lost(&error.to_string());
                Err(error)
            }
        }
    }

    fn lost(&self, message: &str) {
        if self.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = message,
                "Redis connection lost; reconnecting in the background"
            );
        }
    }
}

/// A TTL as Redis milliseconds: rounded down (a lease never outlives what its holder was promised),
/// at least 1 (Redis refuses 0) and at most [`MAX_TTL_MS`].
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TTL_MS)
}

fn timed_out() -> LockError {
    LockError::Unavailable(format!(
        "Redis did not answer within {} s",
        OPERATION_TIMEOUT.as_secs()
    ))
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// A short, single-line description of a Redis error.
fn describe(e: &RedisError) -> String {
    let message = if e.is_timeout() {
        "Redis timed out".to_owned()
    } else if e.is_connection_refusal() {
        "Redis refused the connection".to_owned()
    } else if e.is_connection_dropped() {
        "the connection to Redis was dropped".to_owned()
    } else {
        format!("Redis: {e}")
    };
    let mut message = message.replace(['\r', '\n'], " ");
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_whole_milliseconds_between_one_and_the_cap() {
        for (ttl, ms) in [
            (Duration::ZERO, 1),
            (Duration::from_micros(1500), 1),
            (Duration::from_millis(200), 200),
            (Duration::from_secs(30), 30_000),
            (Duration::MAX, MAX_TTL_MS),
        ] {
            assert_eq!(ttl_ms(ttl), ms, "{ttl:?}");
        }
    }

    #[test]
    fn error_messages_are_short_single_lines() {
        let e = RedisError::from((
            redis::ErrorKind::ResponseError,
            "boom",
            format!("line one\nline two {}", "x".repeat(500)),
        ));
        let m = describe(&e);
        assert!(!m.contains('\n'));
        assert!(m.chars().count() <= MAX_MESSAGE_CHARS + 1, "{m}");
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(describe(&refused), "Redis refused the connection");
        assert!(is_connection_error(&refused));
    }

    #[tokio::test]
    async fn an_invalid_url_is_refused_without_panicking() {
        let err = RedisLocks::connect("not a url", RedisOptions::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid Redis URL"), "{err}");
    }
}
