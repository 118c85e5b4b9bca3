//! The store conformance suite on `MemoryStore` with every engine-level
//! case run on an engine with a cache: the cache must not change what any
//! engine call answers.

use std::sync::Arc;

use keysmith_core::MemoryStore;
use keysmith_core::store::CacheConfig;
use keysmith_tests::store_conformance::Fixture;

async fn setup() -> Option<Fixture> {
    let fixture = Fixture::new(Arc::new(MemoryStore::new())).await;
    Some(fixture.with_engine_cache(CacheConfig::default()))
}

keysmith_tests::store_conformance_tests!(setup);
