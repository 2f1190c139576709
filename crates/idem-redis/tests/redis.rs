//! What is particular to the Redis implementation: the key layout under the prefix, a malformed cache
//! entry read as a miss, and the behaviour while Redis is down and after it comes back.
//!
//! Invariant: each test owns its keys (a fresh prefix) or its own `redis-server` process; none
//! restarts or flushes the shared Redis.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use idem_core::ids::TaskId;
use idem_core::locks::{IdempotencyCache, LockError, Locks};
use idem_redis::{RedisLocks, RedisOptions};
use idem_testkit::services::{or_skip, service_url, unique_name};
use tokio::time::Instant;

fn redis_url() -> String {
    service_url("IDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
}

fn fresh_prefix() -> String {
    format!("{}:", unique_name("t"))
}

/// A plain connection for looking at (and planting) raw keys.
async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn every_key_lives_under_the_prefix_and_the_fence_never_expires() {
    let prefix = fresh_prefix();
    let opts = RedisOptions {
        key_prefix: prefix.clone(),
    };
    let Some(redis) = or_skip("Redis", RedisLocks::connect(&redis_url(), opts).await) else {
        return;
    };
    let lease = redis
        .acquire("n", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    redis
        .put("k", "fp", TaskId::generate(), Duration::from_secs(30))
        .await
        .unwrap();

    let mut raw = raw_connection().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut raw)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{prefix}fence:n"),
            format!("{prefix}idem:k"),
            format!("{prefix}lock:n"),
        ]
    );
    let token: String = redis::cmd("GET")
        .arg(format!("{prefix}lock:n"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(token, lease.token);
    let fence_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}fence:n"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(fence_ttl, -1, "the fence counter has no TTL");
    let lock_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}lock:n"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(0 < lock_ttl && lock_ttl <= 30_000, "{lock_ttl}");
}

#[tokio::test]
async fn a_malformed_cache_entry_is_a_miss() {
    let prefix = fresh_prefix();
    let opts = RedisOptions {
        key_prefix: prefix.clone(),
    };
    let Some(redis) = or_skip("Redis", RedisLocks::connect(&redis_url(), opts).await) else {
        return;
    };
    let mut raw = raw_connection().await;
    redis::cmd("SET")
        .arg(format!("{prefix}idem:bad"))
        .arg("not-a-task-id")
        .arg("PX")
        .arg(30_000)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    assert_eq!(redis.get("bad").await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang() {
    // Nothing listens on port 1.
    let started = Instant::now();
    let err = RedisLocks::connect("redis://127.0.0.1:1/0", RedisOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Unavailable(_)));
    assert!(started.elapsed() < Duration::from_secs(6), "{err}");
}

/// A `redis-server` of this test's own, killed when dropped.
struct OwnRedis {
    child: Child,
}

impl OwnRedis {
    /// Starts `redis-server` on `port`; `None` when the binary is not installed.
    fn start(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Self { child })
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn poll_until_ok<T, F, Fut>(within: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LockError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_fast_while_redis_is_down_and_succeed_again_once_it_is_back() {
    let port = free_port();
    let Some(server) = OwnRedis::start(port) else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    let url = format!("redis://127.0.0.1:{port}/0");
    let redis = poll_until_ok(Duration::from_secs(10), || {
        RedisLocks::connect(&url, RedisOptions::default())
    })
    .await;
    redis.ping().await.unwrap();

    server.kill();
    // The first call finds the connection dropped, the second waits for a reconnection round that
    // cannot succeed: both must answer, and in bounded time.
    for _ in 0..2 {
        let started = Instant::now();
        let err = redis.ping().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "took {:?}: {err}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    redis
        .acquire("during-outage", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(6));

    let _server = OwnRedis::start(port).unwrap();
    poll_until_ok(Duration::from_secs(15), || redis.ping()).await;
    // Scripts work again too: the restarted server's script cache was empty.
    let lease = redis
        .acquire("after-outage", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free");
    assert!(redis.release(&lease).await.unwrap());
}
