//! `PolicySpec` validation: any JSON a caller can deserialize into a spec is
//! either refused with a clear `InvalidInput`, or stored
//! as a policy whose text is clean and which can be enforced: a key under
//! it validates to a pass or a refusal, never a panic or an error.
#![no_main]

#[path = "clean.rs"]
mod clean;

use std::sync::Arc;

use clean::{clean, clean_json};
use keysmith_core::{Engine, Error, MemoryStore, NewKey, PolicySpec, RequestContext, ValidationError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<PolicySpec>(data) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
        let tenant = engine.tenant("fuzz", "t");
        let policy = match tenant.create_policy(spec.clone()).await {
            Ok(policy) => policy,
            Err(Error::InvalidInput { reason, .. }) => {
                assert!(!reason.is_empty());
                return;
            }
            Err(other) => panic!("a spec is accepted or InvalidInput, got {other:?}"),
        };
        assert_eq!(policy.name, spec.name.trim());
        assert!(!policy.name.is_empty() && clean(&policy.name), "{:?}", policy.name);
        assert!(policy.metadata.iter().all(|(k, v)| clean(k) && clean_json(v)));
        assert!(policy.allowed_scopes.iter().all(|s| keysmith_core::scope::validate_name(s).is_ok()));
        assert_eq!(tenant.get_policy(policy.id).await.unwrap(), policy);
        // Writing the same spec again is accepted: validation is a function
        // of the spec.
        tenant.update_policy(policy.id, spec).await.unwrap();

        // The policy can be enforced.
        let scopes: Vec<String> = policy.allowed_scopes.iter().take(3).cloned().collect();
        let key = tenant.create_key(NewKey::new("k").with_policy(policy.id).with_scopes(scopes)).await.unwrap();
        let ctx = RequestContext::new();
        for _ in 0..3 {
            match engine.validate(key.raw.expose(), &ctx).await {
                Ok(_) | Err(ValidationError::Refused(_)) => {}
                Err(failed) => panic!("an accepted policy failed validation: {failed:?}"),
            }
        }
    });
});
