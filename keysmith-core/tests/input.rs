//! Control characters in what callers write are refused by the engine,
//! before any store sees them.

mod support;

use keysmith_core::{Error, NewKey, PolicySpec};
use serde_json::{Map, Value, json};
use support::{builder, counting_store};

fn metadata(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Error>, field: &str) {
    match result {
        Err(Error::InvalidInput { field: f, reason }) => {
            assert_eq!(f, field, "{reason}");
            assert!(reason.contains("control character"), "{reason}");
        }
        other => panic!("expected InvalidInput on {field}, got {other:?}"),
    }
}

#[tokio::test]
async fn control_characters_are_invalid_input_and_never_reach_the_store() {
    let (store, calls) = counting_store();
    let engine = builder(store).build().unwrap();
    let acme = engine.tenant("app", "acme");
    let key = acme.create_key(NewKey::new("ok")).await.unwrap().key;
    let before = calls.calls();

    for name in ["nul\0", "bell\u{7}", "esc\u{1b}[2J", "del\u{7f}", "c1\u{9b}", "in\nside"] {
        assert_invalid(acme.create_key(NewKey::new(name)).await, "name");
        assert_invalid(acme.create_policy(PolicySpec::new(name)).await, "name");
        assert_invalid(acme.create_scope("read", name).await, "description");
        assert_invalid(acme.revoke_key(key.id, name).await, "reason");
    }
    for bad in [json!({"note": "\0"}), json!({"a": [{"b": "x\u{1}"}]}), json!({"k\0": 1})] {
        assert_invalid(acme.create_key(NewKey::new("k").with_metadata(metadata(bad.clone()))).await, "metadata");
        let mut spec = PolicySpec::new("p");
        spec.metadata = metadata(bad);
        assert_invalid(acme.create_policy(spec).await, "metadata");
    }
    assert!(matches!(acme.create_scope("read\0", "").await, Err(Error::InvalidInput { field: "scope", .. })));
    assert!(matches!(
        acme.create_policy(PolicySpec::new("p").with_allowed_origins(["https://a\0.example"])).await,
        Err(Error::InvalidInput { field: "allowed_origins", .. })
    ));
    assert_eq!(calls.calls(), before, "no refused write reached the store");

    // Updates are checked the same way (after the policy is read).
    let policy = acme.create_policy(PolicySpec::new("p")).await.unwrap();
    assert_invalid(acme.update_policy(policy.id, PolicySpec::new("p\0")).await, "name");
    assert_eq!(acme.get_policy(policy.id).await.unwrap(), policy);
    assert_eq!(acme.get_key(key.id).await.unwrap().state, keysmith_core::KeyState::Active);

    // Ordinary text, Unicode and surrounding spaces are fine; the name is
    // stored trimmed.
    let created = acme.create_key(NewKey::new("  café ☕ key\u{3000}")).await.unwrap();
    assert_eq!(created.key.name, "café ☕ key");
    acme.create_scope("read", "Read users — every field").await.unwrap();
}

#[tokio::test]
async fn revoke_reasons_are_bounded() {
    let (store, _) = counting_store();
    let acme = builder(store).build().unwrap().tenant("app", "acme");
    let key = acme.create_key(NewKey::new("k")).await.unwrap().key;
    let refused = acme.revoke_key(key.id, "r".repeat(1025)).await;
    assert!(matches!(refused, Err(Error::InvalidInput { field: "reason", .. })), "{refused:?}");
    assert_eq!(acme.revoke_key(key.id, "r".repeat(1024)).await.unwrap().revoked_reason.unwrap().len(), 1024);
}
