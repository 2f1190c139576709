//! The writer: the one SQLite connection this process writes through, held by one write at a time.
//!
//! It is a connection behind a mutex rather than a pool of one: sqlx runs each SQLite connection on
//! its own thread, and a pool pings that thread before handing the connection out and again when it
//! comes back — two round trips to the thread around every write, both on the path of the next
//! write, which waits for the connection to return. An in-process connection has no other end that
//! could have gone away, so the pings bought nothing.
//!
//! The hot writes (a claim, an outcome, a one-task submission) go further: each is one script —
//! `BEGIN IMMEDIATE; …; COMMIT` — sent to the connection's thread at once ([`WriterConn::transact`]),
//! one round trip to that thread instead of one per statement.
//!
//! Invariant: a write that is abandoned mid-way (its future dropped) or fails leaves no transaction
//! open for the next holder. A `Transaction` queues its `ROLLBACK` on the connection's thread when
//! dropped; a script marks the connection open until its answer is read, and whoever finds it still
//! marked (the script failed or was dropped) rolls back first. The thread runs commands in the
//! order they were sent, so the rollback runs after the abandoned script and before anything else.

use std::sync::Arc;
use std::time::Duration;

use idem_core::StoreError;
use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqliteRow};
use sqlx::{Connection, Sqlite, SqliteConnection, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::db_err;

/// How long a write waits for the writer before it answers `Unavailable` (as the pool's acquire
/// timeout did).
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// A query over the writer, with its arguments bound.
pub(super) type Script<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// The shared handle to the writer connection.
#[derive(Clone)]
pub(super) struct Writer(Arc<Mutex<WriterConn>>);

/// The writer connection and whether a script may have left a transaction open on it.
pub(super) struct WriterConn {
    conn: SqliteConnection,
    /// Set while a script runs; still set when the next holder comes, the script did not finish.
    open: bool,
}

impl Writer {
    pub(super) async fn connect(opts: &SqliteConnectOptions) -> Result<Self, StoreError> {
        let mut conn = SqliteConnection::connect_with(opts).await.map_err(db_err)?;
        // The rows a script picked, for its later statements (a claim's candidates, the tasks an
        // outcome group may finish); emptied before each script commits. In memory: nothing in it
        // outlives its transaction, so nothing of it needs a disk.
        sqlx::query(
            "PRAGMA temp_store = MEMORY;
             CREATE TEMP TABLE IF NOT EXISTS picked (rid INTEGER PRIMARY KEY)",
        )
        .execute(&mut conn)
        .await
        .map_err(db_err)?;
        Ok(Self(Arc::new(Mutex::new(WriterConn { conn, open: false }))))
    }

    /// Waits for the writer; the writes of this process take it in the order they asked (the
    /// mutex is fair). Rolls back what an unfinished script left open.
    pub(super) async fn lock(&self) -> Result<MutexGuard<'_, WriterConn>, StoreError> {
        let mut w = tokio::time::timeout(LOCK_TIMEOUT, self.0.lock())
            .await
            .map_err(|_| {
                StoreError::Unavailable("timed out waiting for the SQLite writer".into())
            })?;
        if w.open {
            w.roll_back().await;
        }
        Ok(w)
    }
}

impl WriterConn {
    /// Runs `script`, a whole transaction (`BEGIN IMMEDIATE; …; COMMIT`, `?NNN` parameters shared
    /// by its statements), in one round trip to the connection's thread; returns the rows its
    /// statements returned. The rows arrive only once the script ended, so nothing is returned
    /// before the commit. On an error nothing of it stays: an open transaction is rolled back.
    pub(super) async fn transact(
        &mut self,
        script: Script<'_>,
    ) -> Result<Vec<SqliteRow>, StoreError> {
        self.open = true;
        match script.fetch_all(&mut self.conn).await {
            Ok(rows) => {
                self.open = false;
                Ok(rows)
            }
            Err(e) => {
                self.roll_back().await;
                Err(db_err(e))
            }
        }
    }

    /// Rolls back whatever transaction is open; none being open is fine (the script failed before
    /// its `BEGIN` or after its `COMMIT`).
    async fn roll_back(&mut self) {
        if let Err(e) = sqlx::query("ROLLBACK").execute(&mut self.conn).await {
            tracing::trace!(error = %e, "no transaction to roll back");
        }
        self.open = false;
    }
}

impl std::ops::Deref for WriterConn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

/// Begins a write transaction. `IMMEDIATE` takes SQLite's write lock at once, so a writer in
/// another process waits here (busy timeout) instead of failing at its first write.
pub(super) async fn begin(
    conn: &mut SqliteConnection,
) -> Result<Transaction<'_, Sqlite>, StoreError> {
    conn.begin_with("BEGIN IMMEDIATE").await.map_err(db_err)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    async fn writer(dir: &tempfile::TempDir) -> Writer {
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let opts = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let w = Writer::connect(&opts).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut **w.lock().await.unwrap())
            .await
            .unwrap();
        w
    }

    async fn rows_and_no_open_transaction(w: &Writer) -> i64 {
        let mut conn = w.lock().await.unwrap();
        // BEGIN inside an open transaction would fail: the next holder starts clean.
        let tx = begin(&mut conn)
            .await
            .expect("no transaction was left open");
        drop(tx);
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM t")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        n
    }

    #[tokio::test]
    async fn a_script_returns_its_rows_after_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir).await;
        let rows = w
            .lock()
            .await
            .unwrap()
            .transact(
                sqlx::query("BEGIN IMMEDIATE; INSERT INTO t VALUES (?1) RETURNING x; COMMIT")
                    .bind(7),
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows_and_no_open_transaction(&w).await, 1);
    }

    #[tokio::test]
    async fn a_failing_script_leaves_nothing_written_and_no_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir).await;
        let r = w
            .lock()
            .await
            .unwrap()
            .transact(sqlx::query(
                "BEGIN IMMEDIATE; INSERT INTO t VALUES (1); INSERT INTO missing VALUES (2); COMMIT",
            ))
            .await;
        assert!(r.is_err());
        assert_eq!(rows_and_no_open_transaction(&w).await, 0);
    }

    #[tokio::test]
    async fn an_abandoned_script_is_rolled_back_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir).await;
        {
            let mut conn = w.lock().await.unwrap();
            // Rows enough for the script to be dropped before its COMMIT; the connection's thread
            // stops at the first row nobody takes.
            let script = sqlx::query(
                "BEGIN IMMEDIATE; INSERT INTO t VALUES (1);
                 WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 50000000)
                 SELECT n FROM c;
                 COMMIT",
            );
            let abandoned =
                tokio::time::timeout(Duration::from_millis(20), conn.transact(script)).await;
            assert!(
                abandoned.is_err(),
                "the script should still have been running"
            );
        }
        assert_eq!(rows_and_no_open_transaction(&w).await, 0);
    }
}
