//! The locks conformance suite on SQLite's lease rows.

use std::sync::Arc;

use idem_core::locks::Locks;
use idem_sql::SqliteStore;

async fn fresh() -> Option<Arc<dyn Locks>> {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("idem.db").display());
    Some(Arc::new(SqliteStore::open(&url).await.unwrap()))
}

idem_testkit::locks_conformance_tests!(|| fresh());
