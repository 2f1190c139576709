//! The shared `Locks` conformance suite of `idem-testkit`, run against Redis, so Redis is held to the
//! same behaviour as every other lock implementation.

use std::sync::Arc;

use idem_core::locks::Locks;
use idem_redis::{RedisLocks, RedisOptions};
use idem_testkit::services::{or_skip, service_url, unique_name};

async fn redis_locks() -> Option<Arc<dyn Locks>> {
    let url = service_url("IDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0");
    let opts = RedisOptions {
        key_prefix: format!("{}:", unique_name("t")),
    };
    let locks = or_skip("Redis", RedisLocks::connect(&url, opts).await)?;
    Some(Arc::new(locks))
}

idem_testkit::locks_conformance_tests!(|| redis_locks());
