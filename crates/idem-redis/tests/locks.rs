//! The `Locks` and `IdempotencyCache` behaviours, run against Redis.
//!
//! Invariant: the cases in `locks_cases` and `cache_cases` use only the traits, so any other
//! implementation (the PostgreSQL store's locks, say) can run them unchanged: they take an
//! `Arc<dyn Locks>` / `Arc<dyn IdempotencyCache>` whose names are its own (a fresh prefix, schema…).
//! Waiting is done by polling with a deadline, and only where expiry is the thing under test.

use std::sync::Arc;

use idem_redis::{RedisLocks, RedisOptions};
use idem_testkit::services::{or_skip, service_url, unique_name};

/// A `RedisLocks` on the test Redis with a key prefix of its own, or `None` (skip) without Redis.
async fn redis() -> Option<RedisLocks> {
    let url = service_url("IDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0");
    let opts = RedisOptions {
        key_prefix: format!("{}:", unique_name("t")),
    };
    or_skip("Redis", RedisLocks::connect(&url, opts).await)
}

mod locks_cases {
    use std::sync::Arc;
    use std::time::Duration;

    use idem_core::locks::Locks;
    use tokio::time::Instant;

    type L = Arc<dyn Locks>;

    const LONG: Duration = Duration::from_secs(30);

    /// Polls `acquire` until it succeeds, failing the test after `within`.
    async fn acquire_within(
        locks: &L,
        name: &str,
        within: Duration,
    ) -> idem_core::locks::LockLease {
        let deadline = Instant::now() + within;
        loop {
            if let Some(lease) = locks.acquire(name, LONG).await.unwrap() {
                return lease;
            }
            assert!(
                Instant::now() < deadline,
                "{name} was not free within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn only_one_of_32_concurrent_acquirers_gets_the_lock(locks: L) {
        let start = Arc::new(tokio::sync::Barrier::new(32));
        let acquirers: Vec<_> = (0..32)
            .map(|_| {
                let (locks, start) = (locks.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    locks.acquire("contended", LONG).await.unwrap()
                })
            })
            .collect();
        let mut winners = Vec::new();
        for acquirer in acquirers {
            winners.extend(acquirer.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
    }

    pub async fn a_lock_expires_after_its_ttl_and_can_be_taken_again(locks: L) {
        let first = locks
            .acquire("expiring", Duration::from_millis(200))
            .await
            .unwrap()
            .expect("free");
        assert!(
            locks.acquire("expiring", LONG).await.unwrap().is_none(),
            "held until its TTL"
        );
        let second = acquire_within(&locks, "expiring", Duration::from_secs(5)).await;
        assert!(second.fence > first.fence);
        assert_ne!(second.token, first.token);
        assert!(
            !locks.extend(&first, LONG).await.unwrap(),
            "an expired lease cannot be extended"
        );
        assert!(
            !locks.release(&first).await.unwrap(),
            "an expired lease cannot release its successor"
        );
        assert!(locks.acquire("expiring", LONG).await.unwrap().is_none());
    }

    pub async fn fencing_tokens_strictly_increase_across_acquisitions(locks: L) {
        let mut last = 0;
        for _ in 0..5 {
            let lease = locks.acquire("fenced", LONG).await.unwrap().expect("free");
            assert!(lease.fence > last, "{} after {last}", lease.fence);
            last = lease.fence;
            assert!(locks.release(&lease).await.unwrap());
        }
        // A failed acquisition does not consume a fencing token's place in the order.
        let held = locks.acquire("fenced", LONG).await.unwrap().expect("free");
        assert!(locks.acquire("fenced", LONG).await.unwrap().is_none());
        assert!(locks.release(&held).await.unwrap());
        let next = locks.acquire("fenced", LONG).await.unwrap().expect("free");
        assert!(next.fence > held.fence && held.fence > last);
    }

    pub async fn extend_by_the_holder_keeps_the_lock_past_its_original_ttl(locks: L) {
        let original = Duration::from_millis(200);
        let taken_at = Instant::now();
        let lease = locks
            .acquire("extended", original)
            .await
            .unwrap()
            .expect("free");
        assert!(locks.extend(&lease, LONG).await.unwrap());
        // Waiting past the original TTL is the point of this case.
        tokio::time::sleep_until(taken_at + original * 2).await;
        assert!(
            locks.acquire("extended", LONG).await.unwrap().is_none(),
            "still held after the original TTL"
        );
        assert!(locks.extend(&lease, LONG).await.unwrap(), "still ours");
    }

    pub async fn extend_or_release_with_a_wrong_token_fails_and_leaves_the_lock_held(locks: L) {
        let lease = locks.acquire("guarded", LONG).await.unwrap().expect("free");
        let forged = idem_core::locks::LockLease {
            token: "0123456789abcdef0123456789abcdef".to_owned(),
            ..lease.clone()
        };
        assert!(!locks.extend(&forged, LONG).await.unwrap());
        assert!(!locks.release(&forged).await.unwrap());
        assert!(locks.acquire("guarded", LONG).await.unwrap().is_none());
        assert!(
            locks.extend(&lease, LONG).await.unwrap(),
            "the holder's lease is intact"
        );
    }

    pub async fn release_by_the_holder_frees_the_lock_at_once(locks: L) {
        let lease = locks
            .acquire("released", LONG)
            .await
            .unwrap()
            .expect("free");
        assert!(locks.release(&lease).await.unwrap());
        let next = locks
            .acquire("released", LONG)
            .await
            .unwrap()
            .expect("free at once");
        assert!(next.fence > lease.fence);
        assert!(
            !locks.release(&lease).await.unwrap(),
            "a second release of the old lease does not free the new one"
        );
        assert!(locks.acquire("released", LONG).await.unwrap().is_none());
    }

    pub async fn two_names_are_independent(locks: L) {
        let a = locks.acquire("a", LONG).await.unwrap().expect("a is free");
        let b = locks.acquire("b", LONG).await.unwrap().expect("b is free");
        assert!(locks.release(&a).await.unwrap());
        assert!(
            locks.acquire("b", LONG).await.unwrap().is_none(),
            "releasing a leaves b held"
        );
        assert!(locks.extend(&b, LONG).await.unwrap());
    }

    pub async fn ping_answers(locks: L) {
        locks.ping().await.unwrap();
    }
}

mod cache_cases {
    use std::sync::Arc;
    use std::time::Duration;

    use idem_core::ids::TaskId;
    use idem_core::locks::IdempotencyCache;
    use tokio::time::Instant;

    type C = Arc<dyn IdempotencyCache>;

    pub async fn cache_put_get_round_trips_and_expires_after_its_ttl(cache: C) {
        let task = TaskId::generate();
        cache
            .put("order-42", "fp-1", task, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(
            cache.get("order-42").await.unwrap(),
            Some(("fp-1".to_owned(), task))
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.get("order-42").await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "the entry never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn cache_get_for_an_unknown_key_is_none(cache: C) {
        assert_eq!(cache.get("never-put").await.unwrap(), None);
    }

    pub async fn a_later_put_replaces_the_entry(cache: C) {
        let (first, second) = (TaskId::generate(), TaskId::generate());
        let ttl = Duration::from_secs(30);
        cache.put("k", "fp-1", first, ttl).await.unwrap();
        cache.put("k", "fp-2", second, ttl).await.unwrap();
        assert_eq!(
            cache.get("k").await.unwrap(),
            Some(("fp-2".to_owned(), second))
        );
    }
}

/// One `#[tokio::test]` per case, each on a fresh `RedisLocks` (own key prefix).
macro_rules! redis_cases {
    ($module:ident: $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(redis) = redis().await else { return };
                $module::$case(Arc::new(redis)).await;
            }
        )+
    };
}

redis_cases!(locks_cases:
    only_one_of_32_concurrent_acquirers_gets_the_lock,
    a_lock_expires_after_its_ttl_and_can_be_taken_again,
    fencing_tokens_strictly_increase_across_acquisitions,
    extend_by_the_holder_keeps_the_lock_past_its_original_ttl,
    extend_or_release_with_a_wrong_token_fails_and_leaves_the_lock_held,
    release_by_the_holder_frees_the_lock_at_once,
    two_names_are_independent,
    ping_answers,
);

redis_cases!(cache_cases:
    cache_put_get_round_trips_and_expires_after_its_ttl,
    cache_get_for_an_unknown_key_is_none,
    a_later_put_replaces_the_entry,
);
