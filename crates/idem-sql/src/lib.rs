//! SQL stores for idem. SQLite is the embedded default; PostgreSQL is its sibling for distributed
//! deployments. Each dialect keeps its SQL in its own module and its migrations in
//! `migrations/{dialect}`; both pass the same conformance suite (`idem-testkit`).
//!
//! Invariant: every `Store` method is one database transaction; SQL is never assembled with
//! `format!` (variable-length lists are bound as one value: a JSON array in SQLite, an array in
//! PostgreSQL).

mod fire;
mod outcome;
pub mod postgres;
pub mod sqlite;
mod wake;

pub use postgres::{PgOptions, PgStore};
pub use sqlite::SqliteStore;

use idem_core::StoreError;

/// Maps a database error to the store's error: connection-level failures are `Unavailable` (the
/// caller may retry), everything else too, since SQL errors here are not the caller's to fix.
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}
