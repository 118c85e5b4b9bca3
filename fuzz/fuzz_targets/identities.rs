//! App, tenant and owner ids: the engine accepts exactly the identities
//! (1 to 128 bytes, no whitespace at either end, no control character),
//! names the first bad field, and refuses before any store call, on a
//! tenant handle, an owner filter, owner credits and a validation
//! restricted to a tenant.
#![no_main]

#[path = "clean.rs"]
mod clean;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use clean::is_identity;
use keysmith_core::store::{KeyFilter, ProbedStore, StoreOp, StoreProbe};
use keysmith_core::{Engine, Error, MemoryStore, RequestContext, Tenant, ValidationError, validate_id};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Ids {
    app_id: String,
    tenant_id: String,
    owner_id: String,
}

/// Counts every store call.
#[derive(Debug, Default)]
struct Calls(AtomicU64);

#[async_trait::async_trait]
impl StoreProbe for Calls {
    async fn before(&self, _: StoreOp) -> keysmith_core::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
    calls: Arc<Calls>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let calls = Arc::new(Calls::default());
    let store = ProbedStore::new(Arc::new(MemoryStore::new()), Arc::clone(&calls));
    let engine = runtime.block_on(async { Engine::builder(Arc::new(store)).build().unwrap() });
    Fixture { runtime, engine, calls }
});

/// The field the engine must name for these ids, checked in this order;
/// `None` when all are identities.
fn first_bad<'a>(ids: &[(&'static str, &'a str)]) -> Option<&'static str> {
    ids.iter().find(|(_, id)| !is_identity(id)).map(|(field, _)| *field)
}

#[track_caller]
fn assert_verdict<T: std::fmt::Debug>(result: Result<T, Error>, expected: Option<&str>) {
    match (result, expected) {
        (Ok(_), None) => {}
        (Err(Error::InvalidInput { field, reason }), Some(bad)) => {
            assert_eq!(field, bad, "{reason}");
            assert!(!reason.is_empty());
        }
        (other, expected) => panic!("expected a refusal naming {expected:?}, got {other:?}"),
    }
}

fuzz_target!(|ids: Ids| {
    let Ids { app_id, tenant_id, owner_id } = &ids;
    for (field, id) in [("app_id", app_id), ("tenant_id", tenant_id), ("owner_id", owner_id)] {
        assert_verdict(validate_id(field, id), (!is_identity(id)).then_some(field));
    }
    let tenant_ids = [("app_id", app_id.as_str()), ("tenant_id", tenant_id.as_str())];
    let all_ids = [tenant_ids[0], tenant_ids[1], ("owner_id", owner_id.as_str())];
    assert_verdict(Tenant::new(app_id, tenant_id).validate(), first_bad(&tenant_ids));

    let Fixture { runtime, engine, calls } = &*FIXTURE;
    runtime.block_on(async {
        let before = calls.0.load(Ordering::SeqCst);
        let handle = engine.tenant(app_id.as_str(), tenant_id.as_str());
        let expected = first_bad(&all_ids);
        assert_verdict(handle.owner_credits(owner_id).await, expected);
        let filter = KeyFilter { owner_id: Some(owner_id.clone()), ..KeyFilter::default() };
        assert_verdict(handle.list_keys(&filter).await, expected);
        if expected.is_some() {
            assert_eq!(calls.0.load(Ordering::SeqCst), before, "a refused id reached the store");
        }

        // A validation restricted to the tenant: a malformed key is refused
        // as such only when the restriction could match a key.
        let ctx = RequestContext { tenant_id: Some(tenant_id), ..RequestContext::new().with_app_id(app_id) };
        match (engine.validate("not a key", &ctx).await, first_bad(&tenant_ids)) {
            (Err(ValidationError::Refused(_)), None) => {}
            (Err(ValidationError::Failed(Error::InvalidInput { field, .. })), Some(bad)) => assert_eq!(field, bad),
            (other, bad) => panic!("restriction with bad field {bad:?}: {other:?}"),
        }
    });
});
