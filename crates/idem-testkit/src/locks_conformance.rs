//! The `Locks` conformance suite: every lock implementation (Redis, and the store's lease rows) is
//! held to the same behaviour: one holder at a time, expiry, holder-only extend and release, and
//! strictly increasing fencing tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_core::locks::Locks;

type L = Arc<dyn Locks>;

pub async fn only_one_of_many_concurrent_acquirers_gets_a_lock(locks: L) {
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let locks = locks.clone();
            tokio::spawn(
                async move { locks.acquire("one", Duration::from_secs(30)).await.unwrap() },
            )
        })
        .collect();
    let mut winners = 0;
    for h in handles {
        winners += usize::from(h.await.unwrap().is_some());
    }
    assert_eq!(winners, 1);
}

pub async fn a_lock_expires_after_its_ttl(locks: L) {
    let first = locks
        .acquire("ttl", Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    assert!(locks
        .acquire("ttl", Duration::from_secs(30))
        .await
        .unwrap()
        .is_none());
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        if let Some(l) = locks.acquire("ttl", Duration::from_secs(30)).await.unwrap() {
            break l;
        }
        assert!(Instant::now() < deadline, "the lock never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(second.fence > first.fence, "fencing tokens increase");
    assert!(
        !locks.extend(&first, Duration::from_secs(30)).await.unwrap(),
        "a stale holder cannot extend"
    );
    assert!(
        !locks.release(&first).await.unwrap(),
        "a stale holder cannot release"
    );
    assert!(
        locks
            .acquire("ttl", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "still held"
    );
}

pub async fn the_holder_extends_and_releases_and_nobody_else_can(locks: L) {
    let held = locks
        .acquire("held", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    let mut forged = held.clone();
    forged.token = "not-the-token".into();
    assert!(!locks
        .extend(&forged, Duration::from_secs(30))
        .await
        .unwrap());
    assert!(!locks.release(&forged).await.unwrap());
    assert!(locks.extend(&held, Duration::from_secs(30)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await; // past the original TTL on purpose
    assert!(
        locks
            .acquire("held", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none(),
        "extended"
    );
    assert!(locks.release(&held).await.unwrap());
    let next = locks
        .acquire("held", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(next.fence > held.fence);
}

pub async fn locks_with_different_names_are_independent(locks: L) {
    let a = locks.acquire("a", Duration::from_secs(30)).await.unwrap();
    let b = locks.acquire("b", Duration::from_secs(30)).await.unwrap();
    assert!(a.is_some() && b.is_some());
}

/// Generates one `#[tokio::test]` per locks case for a factory returning `Option<Arc<dyn Locks>>`.
#[macro_export]
macro_rules! locks_conformance_tests {
    ($factory:expr) => {
        $crate::locks_conformance_tests!(@cases $factory;
            only_one_of_many_concurrent_acquirers_gets_a_lock,
            a_lock_expires_after_its_ttl,
            the_holder_extends_and_releases_and_nobody_else_can,
            locks_with_different_names_are_independent,
        );
    };
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let factory = $factory;
                let Some(locks) = factory().await else { return };
                $crate::locks_conformance::$case(locks).await;
            }
        )+
    };
}
