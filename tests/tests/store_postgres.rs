//! The store conformance suite on `PgStore` (one fresh database per test),
//! and what only a server can show: outages and recovery, concurrent
//! migrations, replayed usage batches, throughput.

use std::sync::Arc;

use keysmith_sqlx::PgStore;
use keysmith_tests::services::PgTestDb;
use keysmith_tests::store_conformance::Fixture;

async fn setup() -> Option<Fixture> {
    let db = PgTestDb::create().await?;
    let store = PgStore::connect(db.url()).await.expect("connect to the test database");
    Some(Fixture::new(Arc::new(store)).await.with_guard(db))
}

keysmith_tests::store_conformance_tests!(setup);
