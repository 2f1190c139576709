//! Reading an idem store directly after (or beside) a measurement: task counts, and the fire
//! history of the schedule scenario, which is far quicker to read in one query than job by job over
//! HTTP. SQLite files are opened read-only.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

/// (job id, slot, recorded at, outcome) of one `job_runs` row.
pub type FireRow = (String, DateTime<Utc>, DateTime<Utc>, String);

pub enum Db {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// The fires of slots in a window: how many of each outcome, and the lateness of each `fired` one.
#[derive(Debug, Default)]
pub struct Fires {
    pub outcomes: BTreeMap<String, i64>,
    /// `recorded_at - scheduled_at` of the fired slots, in milliseconds.
    pub lateness_ms: Vec<f64>,
}

impl Db {
    pub async fn open(url: &str) -> anyhow::Result<Db> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("parsing {url}"))?
                .read_only(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .with_context(|| format!("opening {url}"))?;
            Ok(Db::Sqlite(pool))
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            Ok(Db::Pg(pool))
        }
    }

    /// Tasks by state.
    pub async fn task_states(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let sql = "SELECT state, count(*) FROM tasks GROUP BY state";
        let rows: Vec<(String, i64)> = match self {
            Db::Sqlite(p) => sqlx::query_as(sql).fetch_all(p).await?,
            Db::Pg(p) => sqlx::query_as(sql).fetch_all(p).await?,
        };
        Ok(rows.into_iter().collect())
    }

    /// The fire history of the slots in `[from, to)`.
    pub async fn fires(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> anyhow::Result<Fires> {
        let mut f = Fires::default();
        match self {
            Db::Sqlite(p) => {
                let (a, b) = (from.timestamp_millis(), to.timestamp_millis());
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT outcome, count(*) FROM job_runs
                     WHERE scheduled_at >= ? AND scheduled_at < ? GROUP BY outcome",
                )
                .bind(a)
                .bind(b)
                .fetch_all(p)
                .await?;
                f.outcomes = rows.into_iter().collect();
                let late: Vec<(i64,)> = sqlx::query_as(
                    "SELECT recorded_at - scheduled_at FROM job_runs
                     WHERE scheduled_at >= ? AND scheduled_at < ? AND outcome = 'fired'",
                )
                .bind(a)
                .bind(b)
                .fetch_all(p)
                .await?;
                f.lateness_ms = late.into_iter().map(|(x,)| x as f64).collect();
            }
            Db::Pg(p) => {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT outcome, count(*) FROM job_runs
                     WHERE scheduled_at >= $1 AND scheduled_at < $2 GROUP BY outcome",
                )
                .bind(from)
                .bind(to)
                .fetch_all(p)
                .await?;
                f.outcomes = rows.into_iter().collect();
                let late: Vec<(f64,)> = sqlx::query_as(
                    "SELECT (extract(epoch FROM recorded_at - scheduled_at) * 1000)::float8
                     FROM job_runs
                     WHERE scheduled_at >= $1 AND scheduled_at < $2 AND outcome = 'fired'",
                )
                .bind(from)
                .bind(to)
                .fetch_all(p)
                .await?;
                f.lateness_ms = late.into_iter().map(|(x,)| x).collect();
            }
        }
        Ok(f)
    }

    /// Every fire record: (job id, slot, recorded at, outcome), by job and slot.
    pub async fn fire_rows(&self) -> anyhow::Result<Vec<FireRow>> {
        let sql = "SELECT job_id, scheduled_at, recorded_at, outcome FROM job_runs
                   ORDER BY job_id, scheduled_at";
        Ok(match self {
            Db::Sqlite(p) => {
                let rows: Vec<(String, i64, i64, String)> =
                    sqlx::query_as(sql).fetch_all(p).await?;
                rows.into_iter()
                    .filter_map(|(j, s, r, o)| {
                        Some((
                            j,
                            DateTime::from_timestamp_millis(s)?,
                            DateTime::from_timestamp_millis(r)?,
                            o,
                        ))
                    })
                    .collect()
            }
            Db::Pg(p) => sqlx::query_as(sql).fetch_all(p).await?,
        })
    }

    /// Jobs in the store.
    pub async fn jobs(&self) -> anyhow::Result<i64> {
        let sql = "SELECT count(*) FROM jobs";
        Ok(match self {
            Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
            Db::Pg(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
        })
    }

    pub async fn close(self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Pg(p) => p.close().await,
        }
    }
}
