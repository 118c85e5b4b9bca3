//! App, tenant and owner ids are identities: 1 to 128 bytes, no whitespace at
//! either end, no control character. Anything else is `InvalidInput` from
//! the engine on every operation, before any store call.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use keysmith_core::store::{KeyFilter, Page, TimeRange};
use keysmith_core::{
    Credits, Error, KeyId, MAX_ID_LEN, NewKey, Period, PolicyId, PolicySpec, RequestContext, RotationReason, ScopeId,
    Tenant, TenantEngine, ValidationError,
};
use support::{builder, counting_store};

type Call<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + 'a>>;

/// Every operation of a tenant handle, each on `key` and `policy` (which
/// exist in the well-formed tenant).
fn every_operation(tenant: &TenantEngine, key: KeyId, policy: PolicyId) -> Vec<(&'static str, Call<'_>)> {
    let all = TimeRange::default();
    vec![
        ("create_key", Box::pin(async move { tenant.create_key(NewKey::new("k")).await.map(drop) })),
        ("get_key", Box::pin(async move { tenant.get_key(key).await.map(drop) })),
        ("list_keys", Box::pin(async move { tenant.list_keys(&KeyFilter::default()).await.map(drop) })),
        ("set_credits", Box::pin(async move { tenant.set_credits(key, Some(Credits::new(1))).await.map(drop) })),
        ("add_credits", Box::pin(async move { tenant.add_credits(key, 1).await.map(drop) })),
        ("owner_credits", Box::pin(async move { tenant.owner_credits("cus_1").await.map(drop) })),
        (
            "set_owner_credits",
            Box::pin(async move { tenant.set_owner_credits("cus_1", Some(Credits::new(1))).await.map(drop) }),
        ),
        ("add_owner_credits", Box::pin(async move { tenant.add_owner_credits("cus_1", 1).await.map(drop) })),
        (
            "rotate_key",
            Box::pin(
                async move { tenant.rotate_key(key, RotationReason::Manual, Some(Duration::ZERO)).await.map(drop) },
            ),
        ),
        ("revoke_key", Box::pin(async move { tenant.revoke_key(key, "gone").await.map(drop) })),
        ("suspend_key", Box::pin(async move { tenant.suspend_key(key).await.map(drop) })),
        ("reactivate_key", Box::pin(async move { tenant.reactivate_key(key).await.map(drop) })),
        ("list_rotations", Box::pin(async move { tenant.list_rotations(key).await.map(drop) })),
        ("set_key_scopes", Box::pin(async move { tenant.set_key_scopes(key, &["read"]).await.map(drop) })),
        ("create_policy", Box::pin(async move { tenant.create_policy(PolicySpec::new("p")).await.map(drop) })),
        ("get_policy", Box::pin(async move { tenant.get_policy(policy).await.map(drop) })),
        ("list_policies", Box::pin(async move { tenant.list_policies(Page::default()).await.map(drop) })),
        ("update_policy", Box::pin(async move { tenant.update_policy(policy, PolicySpec::new("q")).await.map(drop) })),
        ("delete_policy", Box::pin(async move { tenant.delete_policy(policy).await })),
        ("create_scope", Box::pin(async move { tenant.create_scope("read", "").await.map(drop) })),
        ("list_scopes", Box::pin(async move { tenant.list_scopes().await.map(drop) })),
        ("delete_scope", Box::pin(async move { tenant.delete_scope(ScopeId::new()).await })),
        ("list_usage", Box::pin(async move { tenant.list_usage(key, all, Page::default()).await.map(drop) })),
        ("usage_aggregates", Box::pin(async move { tenant.usage_aggregates(key, Period::Day, all).await.map(drop) })),
        ("usage_totals", Box::pin(async move { tenant.usage_totals(Period::Day, all).await.map(drop) })),
    ]
}

#[track_caller]
fn assert_invalid(result: Result<(), Error>, field: &str, what: &str) {
    match result {
        Err(Error::InvalidInput { field: f, .. }) if f == field => {}
        other => panic!("{what}: expected InvalidInput on {field}, got {other:?}"),
    }
}

#[tokio::test]
async fn every_operation_of_a_handle_for_an_id_that_is_not_an_identity_is_invalid_input_before_any_store_call() {
    let (store, calls) = counting_store();
    let engine = builder(store).build().unwrap();
    let acme = engine.tenant("billing", "acme");
    let key = acme.create_key(NewKey::new("kept")).await.unwrap().key;
    let policy = acme.create_policy(PolicySpec::new("kept")).await.unwrap();
    acme.set_owner_credits("cus_1", Some(Credits::new(5))).await.unwrap();
    let before = calls.calls();

    let too_long = "x".repeat(MAX_ID_LEN + 1);
    let bad_ids = ["acme ", " acme", "acme\t", "acme\u{a0}", "acme\u{3000}", "", "ac\0me", "ac\u{1b}me", &too_long];
    for bad in bad_ids {
        for (handle, field) in [(engine.tenant("billing", bad), "tenant_id"), (engine.tenant(bad, "acme"), "app_id")] {
            assert_invalid(handle.tenant().validate(), field, &format!("Tenant::validate for {bad:?}"));
            for (operation, call) in every_operation(&handle, key.id, policy.id) {
                assert_invalid(call.await, field, &format!("{operation} for {bad:?}"));
            }
        }
    }
    assert_eq!(calls.calls(), before, "no operation of a bad handle reached the store");

    // Nothing of acme's changed.
    assert_eq!(acme.get_key(key.id).await.unwrap(), key);
    assert_eq!(acme.get_policy(policy.id).await.unwrap(), policy);
    assert_eq!(acme.owner_credits("cus_1").await.unwrap(), Some(Credits::new(5)));
}

#[tokio::test]
async fn owner_ids_are_checked_wherever_they_enter_before_any_store_call() {
    let (store, calls) = counting_store();
    let engine = builder(store).build().unwrap();
    let acme = engine.tenant("billing", "acme");
    acme.create_key(NewKey::new("k").with_owner("cus_1")).await.unwrap();
    acme.set_owner_credits("cus_1", Some(Credits::new(5))).await.unwrap();
    let before = calls.calls();

    let too_long = "é".repeat(MAX_ID_LEN / 2 + 1);
    for bad in ["cus_1 ", " cus_1", "cus_1\n", "", "\u{2003}", too_long.as_str()] {
        let acme = &acme;
        let filter = KeyFilter { owner_id: Some(bad.to_owned()), ..KeyFilter::default() };
        let operations: [(&str, Call<'_>); 5] = [
            ("create_key", Box::pin(async move { acme.create_key(NewKey::new("k").with_owner(bad)).await.map(drop) })),
            ("list_keys", Box::pin(async move { acme.list_keys(&filter).await.map(drop) })),
            ("owner_credits", Box::pin(async move { acme.owner_credits(bad).await.map(drop) })),
            ("set_owner_credits", Box::pin(async move { acme.set_owner_credits(bad, None).await.map(drop) })),
            ("add_owner_credits", Box::pin(async move { acme.add_owner_credits(bad, 1).await.map(drop) })),
        ];
        for (operation, call) in operations {
            assert_invalid(call.await, "owner_id", &format!("{operation} for {bad:?}"));
        }
    }
    assert_eq!(calls.calls(), before, "no refused owner id reached the store");
    assert_eq!(acme.owner_credits("cus_1").await.unwrap(), Some(Credits::new(5)));
    let listed = acme.list_keys(&KeyFilter { owner_id: Some("cus_1".into()), ..KeyFilter::default() }).await;
    assert_eq!(listed.unwrap().len(), 1);
}

#[tokio::test]
async fn identities_of_128_bytes_any_script_and_inner_spaces_are_accepted() {
    let (engine, _) = support::engine();
    let longest = "x".repeat(MAX_ID_LEN);
    let two_byte = "é".repeat(MAX_ID_LEN / 2);
    for (app, tenant) in [(longest.as_str(), two_byte.as_str()), ("my app", "ACME Corp"), ("支付", "café ☕")] {
        let handle = engine.tenant(app, tenant);
        let created = handle.create_key(NewKey::new("k").with_owner(longest.as_str())).await.unwrap();
        assert_eq!(created.key.tenant, Tenant::new(app, tenant), "stored as given, never trimmed");
        assert_eq!(handle.owner_credits(&two_byte).await.unwrap(), None);
        let validation = engine.validate(created.raw.expose(), &RequestContext::new()).await.unwrap();
        assert_eq!(validation.key.tenant, Tenant::new(app, tenant));
    }
}

#[tokio::test]
async fn a_validation_restricted_to_an_app_or_tenant_that_no_key_can_have_fails_before_any_store_call() {
    let (store, calls) = counting_store();
    let engine = builder(store).build().unwrap();
    let created = engine.tenant("billing", "acme").create_key(NewKey::new("k")).await.unwrap();
    let raw = created.raw.expose();
    let before = calls.calls();

    let restrictions = [
        (RequestContext::new().with_app_id("billing "), "app_id"),
        (RequestContext::new().with_app_id(""), "app_id"),
        (RequestContext { tenant_id: Some("acme "), ..RequestContext::new().with_app_id("billing") }, "tenant_id"),
        // A tenant id means nothing without its application.
        (RequestContext { tenant_id: Some("acme"), ..RequestContext::new() }, "tenant_id"),
    ];
    for (ctx, field) in restrictions {
        match engine.validate(raw, &ctx).await {
            Err(ValidationError::Failed(Error::InvalidInput { field: f, .. })) => assert_eq!(f, field),
            other => panic!("expected a failed validation naming {field}, got {other:?}"),
        }
    }
    assert_eq!(calls.calls(), before, "refused before the lookup");
    // The exact ids pass.
    let exact = Tenant::new("billing", "acme");
    assert!(engine.validate(raw, &RequestContext::new().with_tenant(&exact)).await.is_ok());
}
