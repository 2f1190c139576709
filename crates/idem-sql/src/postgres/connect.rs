//! Connecting a [`PgStore`]: options, the schema, the pool, the clock and the listener, and the
//! migrations.
//!
//! Invariant: `connect` returns only once the listener LISTENs, so no notification committed after
//! it returns is missed; `migrate` is safe to run from many processes at once.

use std::str::FromStr;
use std::sync::Arc;

use idem_core::{StoreError, Wakeups};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::clock::DbClock;
use super::notify::{self, Channels};
use super::PgStore;
use crate::db_err;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How a [`PgStore`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// The pool's size: the most queries this process runs against the database at once.
    pub max_connections: u32,
    /// The schema that holds idem's tables, created if missing and put first on every connection's
    /// `search_path`; `None` uses the connection's default (`public`). One schema per test (or per
    /// tenant) isolates stores sharing a database, wake-ups included. `[A-Za-z_][A-Za-z0-9_]*`.
    pub schema: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            schema: None,
        }
    }
}

/// A setting `connect` refuses before touching the database.
#[derive(Debug, thiserror::Error)]
#[error("schema name must match [A-Za-z_][A-Za-z0-9_]{{0,62}}, got {0:?}")]
pub struct InvalidSchema(String);

impl PgStore {
    /// Connects to `url` (`postgres://…`) with the default options and applies the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, PgOptions::default()).await
    }

    /// Connects with `opts` and applies the migrations.
    pub async fn open_with(url: &str, opts: PgOptions) -> Result<Self, StoreError> {
        let store = Self::connect(url, opts).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without migrating (`--no-migrate`): creates the schema if one is set, measures the
    /// database clock and starts listening for other processes' notifications before returning, so
    /// none sent after this returns is missed.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<Self, StoreError> {
        let mut connect = PgConnectOptions::from_str(url).map_err(db_err)?;
        if let Some(schema) = &opts.schema {
            if !valid_schema(schema) {
                return Err(StoreError::Unavailable(Box::new(InvalidSchema(
                    schema.clone(),
                ))));
            }
            // Quoted, so a mixed-case name means the schema `create_schema` made.
            connect = connect.options([("search_path", format!("\"{schema}\""))]);
        }
        // A process cut off in the middle of a transaction (a partition that drops packets) would
        // otherwise keep its row locks — due jobs, claimed tasks — until the server notices the dead
        // peer, which by TCP keepalive takes hours: other schedulers and workers skip locked rows,
        // so those jobs would not fire. The server ends such a session after 10 s instead. idem's
        // transactions never wait on anything but the database between statements.
        connect = connect.options([("idle_in_transaction_session_timeout", "10s")]);
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            // While PostgreSQL is down a call fails within this (503, a retry with backoff)
            // instead of sqlx's default 30 s, so readiness and the roles notice quickly.
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(connect.clone())
            .await
            .map_err(db_err)?;
        if let Some(schema) = &opts.schema {
            create_schema(&pool, schema).await?;
        }
        let clock = DbClock::connect(&pool).await.map_err(db_err)?;
        let channels = Channels::new(opts.schema.as_deref());
        let wakeups = Arc::new(Wakeups::default());
        let stop = CancellationToken::new();
        // The listener's own connection, so a busy pool never starves it (nor it the pool).
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(connect.clone())
            .await
            .map_err(db_err)?;
        notify::listen(
            listener_pool,
            channels.clone(),
            wakeups.clone(),
            stop.clone(),
        )
        .await
        .map_err(db_err)?;
        let channels = Arc::new(channels);
        let announcer = Arc::new(super::announce::Announcer::start(
            pool.clone(),
            channels.clone(),
        ));
        Ok(Self {
            pool,
            connect,
            wakeups,
            announcer,
            clock: Arc::new(clock),
            _listener: Arc::new(stop.drop_guard()),
        })
    }

    /// Applies pending migrations. Safe to run from many processes at once: sqlx serializes them
    /// with an advisory lock. They run on a connection of their own, closed afterwards, so a failed
    /// migration cannot leave that session lock held on a connection of the store's pool.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(self.connect.clone())
            .await
            .map_err(db_err)?;
        let out = MIGRATOR
            .run(&own)
            .await
            .map_err(|e| StoreError::Unavailable(Box::new(e)));
        own.close().await;
        out
    }
}

/// A name that needs no quoting anywhere: the `search_path` option, channel names, logs.
fn valid_schema(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Creates the schema if missing. The name is quoted by the server (`format('%I')`), never spliced
/// into SQL here; the advisory lock serializes concurrent creators, which would otherwise race on
/// the catalog's unique index.
async fn create_schema(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('idem.create_schema')),
             set_config('idem.schema', $1, true)",
    )
    .bind(schema)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    // Looked up first: an existing schema needs no CREATE privilege on the database.
    sqlx::query(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = current_setting('idem.schema'))
             THEN
                 EXECUTE format('CREATE SCHEMA %I', current_setting('idem.schema'));
             END IF;
         END $$",
    )
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.commit().await.map_err(db_err)
}
