//! Service URLs for tests against real PostgreSQL, RabbitMQ and Redis, and the skip rule: a test runs
//! where its service answers (at the URL in its variable, or the machine's default) and says
//! "skipped" where it does not — unless `IDEM_TEST_REQUIRE_SERVICES=1` makes absence a failure, as
//! CI does.

/// The URL in `var`, or `default` when unset.
pub fn service_url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Whether a missing or unreachable service must fail the test.
pub fn services_required() -> bool {
    std::env::var("IDEM_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Turns a failed connection into a skip (`None`, with a notice), or a failure when services are
/// required.
pub fn or_skip<T, E: std::fmt::Display>(service: &str, r: Result<T, E>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if services_required() => {
            panic!("{service} is required (IDEM_TEST_REQUIRE_SERVICES=1) but unreachable: {e}")
        }
        Err(e) => {
            eprintln!("skipped: {service} unreachable ({e})");
            None
        }
    }
}

/// A name unique to this test run, for schemas, vhosts, queue suffixes and key prefixes.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}
