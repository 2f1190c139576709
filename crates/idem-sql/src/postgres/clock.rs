//! The database's clock, read without a query per call: the offset between the database clock and
//! this host's is measured at connect and re-measured at most every [`REFRESH`].
//!
//! Invariant: every process sharing one database derives `now` from that database's clock, so hosts
//! with skewed clocks agree on due times and leases (to within one round trip and the drift since
//! the last measurement).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// How long a measured offset is trusted.
pub(super) const REFRESH: Duration = Duration::from_secs(10);

pub(super) struct DbClock {
    /// When the offset was last measured (or a measurement began), and the offset: db − local.
    offset: Mutex<(Instant, chrono::Duration)>,
}

impl DbClock {
    /// Measures the offset once.
    pub(super) async fn connect(pool: &PgPool) -> Result<Self, sqlx::Error> {
        let offset = measure(pool).await?;
        Ok(Self {
            offset: Mutex::new((Instant::now(), offset)),
        })
    }

    /// The database's time now, at millisecond precision.
    pub(super) async fn now(&self, pool: &PgPool) -> DateTime<Utc> {
        let (stale, mut offset) = {
            let mut g = self.offset.lock().expect("clock lock");
            let stale = g.0.elapsed() >= REFRESH;
            if stale {
                // Claim the refresh, so concurrent callers keep using the current offset meanwhile.
                g.0 = Instant::now();
            }
            (stale, g.1)
        };
        if stale {
            match measure(pool).await {
                Ok(fresh) => {
                    *self.offset.lock().expect("clock lock") = (Instant::now(), fresh);
                    offset = fresh;
                }
                // The last offset is still the best estimate; the store's next call reports the
                // outage.
                Err(e) => tracing::debug!(error = %e, "could not re-read the database clock"),
            }
        }
        idem_core::time::trunc_ms(Utc::now() + offset)
    }
}

/// db − local, taking the local time halfway through the round trip. The connection is acquired
/// first so that waiting for it does not count as network delay.
async fn measure(pool: &PgPool) -> Result<chrono::Duration, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let before = Utc::now();
    let (db,): (DateTime<Utc>,) = sqlx::query_as("SELECT clock_timestamp()")
        .fetch_one(&mut *conn)
        .await?;
    let after = Utc::now();
    Ok(db - (before + (after - before) / 2))
}
