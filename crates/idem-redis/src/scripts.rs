//! The Lua scripts behind the lock operations. Each runs atomically inside Redis, so a check and the
//! write it guards can never be split by another client.
//!
//! Invariants: a lock key is written only with `NX` (taking a free name) or after its value was
//! compared with the caller's token (extend, release); the fence counter is only ever incremented,
//! and only in the same script step that took the lock.

use redis::Script;

/// `KEYS[1]` lock key, `KEYS[2]` fence key, `ARGV[1]` token, `ARGV[2]` TTL in ms.
/// Returns the new fencing token, or nil when the name is held.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
";

/// `KEYS[1]` lock key, `ARGV[1]` token, `ARGV[2]` TTL in ms. Returns 1 when extended, else 0.
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// `KEYS[1]` lock key, `ARGV[1]` token. Returns 1 when deleted, else 0.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The prepared scripts; `Script` keeps the SHA1 so calls use `EVALSHA` and reload the script after
/// a Redis restart emptied its script cache.
#[derive(Debug, Clone)]
pub(crate) struct Scripts {
    pub(crate) acquire: Script,
    pub(crate) extend: Script,
    pub(crate) release: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            acquire: Script::new(ACQUIRE),
            extend: Script::new(EXTEND),
            release: Script::new(RELEASE),
        }
    }
}
