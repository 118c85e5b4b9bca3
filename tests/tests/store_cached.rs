//! The store conformance suite on `CachedStore` in front of `MemoryStore`:
//! the cache must not change what any store call answers.

use std::sync::Arc;

use keysmith_core::{CachedStore, MemoryStore};
use keysmith_tests::store_conformance::Fixture;

async fn setup() -> Option<Fixture> {
    let cached = CachedStore::new(Arc::new(MemoryStore::new()));
    Some(Fixture::new(Arc::new(cached)).await)
}

keysmith_tests::store_conformance_tests!(setup);
