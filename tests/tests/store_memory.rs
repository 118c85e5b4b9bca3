//! The store conformance suite on `MemoryStore`.

use std::sync::Arc;

use keysmith_core::MemoryStore;
use keysmith_tests::store_conformance::Fixture;

async fn setup() -> Option<Fixture> {
    Some(Fixture::new(Arc::new(MemoryStore::new())).await)
}

keysmith_tests::store_conformance_tests!(setup);

#[tokio::test]
async fn replayed_usage_batch_is_counted_once() {
    keysmith_tests::sql_cases::replayed_usage_batch_is_counted_once(Arc::new(MemoryStore::new())).await;
}
