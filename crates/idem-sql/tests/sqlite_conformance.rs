//! The store conformance suite on SQLite: a fresh database file per test.

use std::sync::Arc;

use idem_core::Store;
use idem_sql::SqliteStore;

async fn fresh() -> Option<Arc<dyn Store>> {
    // The directory lives as long as the test process; each test gets its own file.
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("idem.db").display());
    Some(Arc::new(SqliteStore::open(&url).await.unwrap()))
}

idem_testkit::store_conformance_tests!(|| fresh());
