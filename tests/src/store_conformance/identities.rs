//! Exact identities: ids that differ only by a space, case or Unicode form are other tenants.

#[allow(clippy::wildcard_imports)]
use super::*;

/// acme's twin in the identity cases: a tenant id with a composed `é`
/// (U+00E9, NFC), so that its decomposed form is a lookalike too.
pub(super) fn cafe() -> Tenant {
    Tenant::new("billing", "caf\u{e9}")
}

/// Tenants that a store comparing loosely (trailing spaces ignored, case
/// folded, Unicode normalized) would take for `tenant`.
pub(super) fn lookalikes(tenant: &Tenant) -> Vec<Tenant> {
    let (app, id) = (tenant.app_id.as_str(), tenant.tenant_id.as_str());
    let decomposed = id.replace('\u{e9}', "e\u{301}");
    assert_ne!(decomposed, id, "the tenant id has a composed é");
    vec![
        Tenant::new(app, format!("{id} ")),
        Tenant::new(app, format!("{id}  ")),
        Tenant::new(format!("{app} "), id),
        Tenant::new(app, id.to_uppercase()),
        Tenant::new(app.to_uppercase(), id),
        Tenant::new(app, decomposed),
    ]
}

/// Owner ids a loose store would take for `owner`.
pub(super) fn owner_lookalikes(owner: &str) -> Vec<String> {
    vec![format!("{owner} "), owner.to_uppercase(), owner.replace('\u{e9}', "e\u{301}")]
}

/// What [`exact_identity_rows`] wrote for one tenant.
#[derive(Debug)]
pub struct IdentityRows {
    /// The tenant that owns everything below.
    pub tenant: Tenant,
    /// A key of an owner, under `policy`.
    pub key: StoredKey,
    /// A policy named `gold`.
    pub policy: Policy,
    /// A registered scope named `read`.
    pub scope: Scope,
}

/// The owner of [`IdentityRows::key`], with 5 credits of its own.
pub const IDENTITY_OWNER: &str = "cus_\u{e9}";

/// Writes, for the tenant `billing`/`café`, a key of owner
/// [`IDENTITY_OWNER`] under a policy `gold`, a scope `read` and the owner's
/// credits, straight into the store (as a database made by an earlier
/// version may hold them).
///
/// # Panics
/// If the store refuses a write.
pub async fn exact_identity_rows(store: &Arc<dyn Store>) -> IdentityRows {
    let tenant = cafe();
    let policy = bare_policy(&tenant, "gold");
    store.insert_policy(&policy).await.unwrap();
    let key = insert(
        store,
        modified(&sample_key(&tenant), |k| {
            k.owner_id = Some(IDENTITY_OWNER.into());
            k.policy_id = Some(policy.id);
        }),
    )
    .await;
    let scope = Scope {
        id: ScopeId::new(),
        tenant: tenant.clone(),
        name: "read".into(),
        description: "read things".into(),
        created_at: t0(),
    };
    store.insert_scope(&scope).await.unwrap();
    store.set_owner_credits(&tenant, IDENTITY_OWNER, Some(&Credits::new(5))).await.unwrap();
    IdentityRows { tenant, key, policy, scope }
}

/// Every lookalike of the rows' tenant (trailing spaces, case, the
/// decomposed `é`) reads, lists, revokes and changes nothing of it, and
/// takes the same names for its own policies, scopes and owner credits; an
/// owner id's lookalikes are other owners; a name's lookalikes are other
/// names. The rows are unchanged afterwards.
///
/// # Panics
/// When a lookalike reaches the rows.
pub async fn lookalikes_reach_nothing(store: &Arc<dyn Store>, rows: &IdentityRows) {
    let IdentityRows { tenant, key, policy, scope } = rows;
    let id = key.key.id;
    for other in lookalikes(tenant) {
        let seen = format!("{other:?}");
        assert_eq!(store.get_key(&other, id).await.unwrap(), None, "{seen}");
        assert!(store.list_keys(&other, &KeyFilter::default()).await.unwrap().is_empty(), "{seen}");
        let owned = KeyFilter { owner_id: Some(IDENTITY_OWNER.into()), ..KeyFilter::default() };
        assert!(store.list_keys(&other, &owned).await.unwrap().is_empty(), "{seen}");
        let revoke = Transition::to(KeyState::Revoked, at(20)).with_reason("lookalike");
        assert_not_found(store.transition_key(&other, id, &revoke).await, "key");
        assert_not_found(store.set_key_scopes(&other, id, &["*".to_owned()], at(20)).await, "key");

        assert_eq!(store.get_policy(&other, policy.id).await.unwrap(), None, "{seen}");
        assert!(store.list_policies(&other, Page::default()).await.unwrap().is_empty(), "{seen}");
        let hijacked = Policy { tenant: other.clone(), name: "hijacked".into(), ..policy.clone() };
        assert_not_found(store.update_policy(&hijacked).await, "policy");
        assert_not_found(store.delete_policy(&other, policy.id).await, "policy");

        assert!(store.list_scopes(&other).await.unwrap().is_empty(), "{seen}");
        assert_not_found(store.delete_scope(&other, scope.id).await, "scope");

        assert_eq!(store.owner_credits(&other, IDENTITY_OWNER).await.unwrap(), None, "{seen}");
        let spent = store.spend_owner_credits(&other, IDENTITY_OWNER, 1, at(20)).await.unwrap();
        assert_eq!(spent, CreditSpend::Unlimited, "{seen}");

        // The lookalike is a tenant of its own: the same names are free.
        store.insert_policy(&bare_policy(&other, "gold")).await.unwrap();
        store.insert_scope(&Scope { id: ScopeId::new(), tenant: other.clone(), ..scope.clone() }).await.unwrap();
        store.set_owner_credits(&other, IDENTITY_OWNER, Some(&Credits::new(1))).await.unwrap();
        assert_eq!(store.list_policies(&other, Page::default()).await.unwrap().len(), 1, "{seen}");
    }

    for owner in owner_lookalikes(IDENTITY_OWNER) {
        assert_eq!(store.owner_credits(tenant, &owner).await.unwrap(), None, "{owner:?}");
        let owned = KeyFilter { owner_id: Some(owner.clone()), ..KeyFilter::default() };
        assert!(store.list_keys(tenant, &owned).await.unwrap().is_empty(), "{owner:?}");
        store.set_owner_credits(tenant, &owner, Some(&Credits::new(7))).await.unwrap();
    }
    // Names that differ by a trailing space or by case are other names.
    for name in ["gold ", "GOLD"] {
        store.insert_policy(&bare_policy(tenant, name)).await.unwrap();
        let scope_name = name.replace("gold", "read").replace("GOLD", "READ");
        let lookalike = Scope { id: ScopeId::new(), name: scope_name, ..scope.clone() };
        store.insert_scope(&lookalike).await.unwrap();
    }
    assert_already_exists(store.insert_policy(&bare_policy(tenant, "gold")).await, "policy");
    assert_already_exists(store.insert_scope(&Scope { id: ScopeId::new(), ..scope.clone() }).await, "scope");

    // Nothing of the tenant's changed.
    assert_eq!(store.get_key(tenant, id).await.unwrap().as_ref(), Some(key));
    assert_eq!(store.get_policy(tenant, policy.id).await.unwrap().as_deref(), Some(policy));
    let owned = KeyFilter { owner_id: Some(IDENTITY_OWNER.into()), ..KeyFilter::default() };
    assert_eq!(store.list_keys(tenant, &owned).await.unwrap().len(), 1);
    let names: Vec<String> = store.list_scopes(tenant).await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["READ", "read", "read "], "three names, byte order");
    assert_eq!(store.list_policies(tenant, Page::default()).await.unwrap().len(), 3);
    assert_eq!(store.owner_credits(tenant, IDENTITY_OWNER).await.unwrap(), Some(Credits::new(5)));
}

/// Ids that differ only by a trailing space, by case or by Unicode form
/// (NFC `é` against NFD `e` + U+0301) are different tenants, owners and
/// names, never the same: key reads by id, listings, revocations, policies,
/// scopes and owner credits of one never reach the other (written against
/// the store: the engine refuses edge whitespace before any store call).
pub async fn ids_differing_only_by_trailing_space_case_or_unicode_form_are_different_tenants(store: Arc<dyn Store>) {
    let rows = exact_identity_rows(&store).await;
    lookalikes_reach_nothing(&store, &rows).await;
}

/// Counts every store call.
#[derive(Debug, Default)]
pub(super) struct CountCalls(std::sync::atomic::AtomicU64);

#[async_trait::async_trait]
impl StoreProbe for CountCalls {
    async fn before(&self, _: StoreOp) -> keysmith_core::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// Through the engine, a tenant, app or owner id with a trailing space is
/// `InvalidInput` naming it, before any store call; the tenant it looks
/// like keeps everything.
pub async fn ids_with_a_trailing_space_are_invalid_input_before_the_store(store: Arc<dyn Store>) {
    let probe = Arc::new(CountCalls::default());
    let probed: Arc<dyn Store> = Arc::new(ProbedStore::new(Arc::clone(&store), Arc::clone(&probe)));
    let engine = engine_builder(probed).build().unwrap();
    let ours = engine.tenant("billing", "acme");
    let key = ours.create_key(NewKey::new("kept").with_owner("cus_1")).await.unwrap().key;
    ours.set_owner_credits("cus_1", Some(Credits::new(5))).await.unwrap();
    let before = probe.0.load(std::sync::atomic::Ordering::SeqCst);

    let invalid = |result: Result<(), Error>, field: &str, what: &str| match result {
        Err(Error::InvalidInput { field: f, .. }) if f == field => {}
        other => panic!("{what}: expected InvalidInput on {field}, got {other:?}"),
    };
    for (handle, field) in
        [(engine.tenant("billing", "acme "), "tenant_id"), (engine.tenant("billing ", "acme"), "app_id")]
    {
        invalid(handle.get_key(key.id).await.map(drop), field, "get_key");
        invalid(handle.list_keys(&KeyFilter::default()).await.map(drop), field, "list_keys");
        invalid(handle.revoke_key(key.id, "lookalike").await.map(drop), field, "revoke_key");
        invalid(handle.list_policies(Page::default()).await.map(drop), field, "list_policies");
        invalid(handle.list_scopes().await.map(drop), field, "list_scopes");
        invalid(handle.owner_credits("cus_1").await.map(drop), field, "owner_credits");
        invalid(handle.create_key(NewKey::new("k")).await.map(drop), field, "create_key");
    }
    let owner = KeyFilter { owner_id: Some("cus_1 ".into()), ..KeyFilter::default() };
    invalid(ours.list_keys(&owner).await.map(drop), "owner_id", "list_keys by owner");
    invalid(ours.owner_credits("cus_1 ").await.map(drop), "owner_id", "owner_credits");
    invalid(ours.set_owner_credits("cus_1 ", None).await.map(drop), "owner_id", "set_owner_credits");
    invalid(ours.create_key(NewKey::new("k").with_owner("cus_1 ")).await.map(drop), "owner_id", "create_key");
    assert_eq!(probe.0.load(std::sync::atomic::Ordering::SeqCst), before, "no refused call reached the store");

    let stored = store.get_key(&acme(), key.id).await.unwrap().expect("acme's key");
    assert_eq!(stored.key.state, KeyState::Active);
    assert_eq!(store.owner_credits(&acme(), "cus_1").await.unwrap(), Some(Credits::new(5)));
    assert_eq!(store.list_keys(&acme(), &KeyFilter::default()).await.unwrap().len(), 1);
}
