//! Keys: creation, lookup by hash, listing, owners' key limits.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Every field of a key survives the store, and both lookups agree.
pub async fn key_round_trips_through_insert_get_and_hash_lookup(store: Arc<dyn Store>) {
    let policy = sample_policy(&acme(), "standard");
    store.insert_policy(&policy).await.unwrap();
    let key = insert(
        &store,
        modified(&sample_key(&acme()), |k| {
            k.policy_id = Some(policy.id);
            k.environment = Environment::Test;
            k.last_used_at = Some(at(5));
        }),
    )
    .await;

    let got = store.get_key(&acme(), key.key.id).await.unwrap().expect("get_key finds the key");
    assert_eq!(got, key);
    let found = store.find_key_by_hash(&key.hash).await.unwrap().expect("find_key_by_hash finds the key");
    assert_eq!(found, key);
    assert_eq!(found.key.scopes, ["write:users", "read", "admin:billing:refunds"], "scopes keep their order");

    // A key without scopes, policy or expiry.
    let bare = insert(
        &store,
        modified(&sample_key(&acme()), |k| {
            k.scopes.clear();
            k.expires_at = None;
            k.metadata.clear();
        }),
    )
    .await;
    assert_eq!(store.get_key(&acme(), bare.key.id).await.unwrap(), Some(bare));
}

/// A second key with a taken id or hash fails and leaves no row behind.
pub async fn taken_key_id_or_hash_is_already_exists_and_writes_nothing(store: Arc<dyn Store>) {
    let first = insert(&store, sample_key(&acme())).await;

    let same_hash = modified(&sample_key(&acme()), |k| k.scopes = vec!["other".into()]);
    let same_hash = StoredKey { hash: first.hash, ..same_hash };
    assert_already_exists(store.insert_key(&same_hash).await, "key");
    assert_eq!(store.get_key(&acme(), same_hash.key.id).await.unwrap(), None);

    let same_id = modified(&sample_key(&acme()), |k| k.id = first.key.id);
    assert_already_exists(store.insert_key(&same_id).await, "key");
    assert_eq!(store.find_key_by_hash(&same_id.hash).await.unwrap(), None);

    // The first key is untouched, scopes included.
    assert_eq!(store.get_key(&acme(), first.key.id).await.unwrap(), Some(first));
}

/// A key can only reference its own tenant's policies; a refused key is not
/// stored at all.
pub async fn key_with_another_tenants_policy_is_not_found_and_not_stored(store: Arc<dyn Store>) {
    let theirs = sample_policy(&globex(), "standard");
    store.insert_policy(&theirs).await.unwrap();

    let key = modified(&sample_key(&acme()), |k| k.policy_id = Some(theirs.id));
    assert_not_found(store.insert_key(&key).await, "policy");
    let missing = modified(&sample_key(&acme()), |k| k.policy_id = Some(PolicyId::new()));
    assert_not_found(store.insert_key(&missing).await, "policy");

    for refused in [&key, &missing] {
        assert_eq!(store.get_key(&acme(), refused.key.id).await.unwrap(), None);
        assert_eq!(store.find_key_by_hash(&refused.hash).await.unwrap(), None);
    }
    assert!(store.list_keys(&acme(), &KeyFilter::default()).await.unwrap().is_empty());
}

/// A hash nobody has is `None`.
pub async fn unknown_hash_finds_nothing(store: Arc<dyn Store>) {
    insert(&store, sample_key(&acme())).await;
    let unknown = Sha256Hasher.hash("sk_live_nobody");
    assert_eq!(store.find_key_by_hash(&unknown).await.unwrap(), None);
}

/// Another tenant (same app or same tenant id in another app) can neither
/// see nor change anything of acme's.
pub async fn other_tenants_see_nothing_and_change_nothing(store: Arc<dyn Store>) {
    let policy = sample_policy(&acme(), "standard");
    store.insert_policy(&policy).await.unwrap();
    let key = insert(&store, modified(&sample_key(&acme()), |k| k.policy_id = Some(policy.id))).await;
    let scope = Scope {
        id: ScopeId::new(),
        tenant: acme(),
        name: "read".into(),
        description: "read things".into(),
        created_at: t0(),
    };
    store.insert_scope(&scope).await.unwrap();
    store.record_batch(&[usage(&key.key, at(1), 200)]).await.unwrap();
    let rotated = insert(&store, sample_key(&acme())).await;
    let rotation = rotation_of(&rotated, 10, Duration::from_secs(60));
    store.rotate_key(&acme(), &rotation).await.unwrap();

    for other in [globex(), acme_elsewhere()] {
        let id = key.key.id;
        assert_eq!(store.get_key(&other, id).await.unwrap(), None);
        assert!(store.list_keys(&other, &KeyFilter::default()).await.unwrap().is_empty());
        let revoke = Transition::to(KeyState::Revoked, at(20)).with_reason("not yours");
        assert_not_found(store.transition_key(&other, id, &revoke).await, "key");
        assert_not_found(store.set_key_scopes(&other, id, &["*".to_owned()], at(20)).await, "key");
        let mut theirs = rotation_of(&key, 20, Duration::ZERO);
        theirs.new_key = modified(&theirs.new_key, |k| k.tenant = other.clone());
        theirs.record.tenant = other.clone();
        assert_not_found(store.rotate_key(&other, &theirs).await, "key");

        assert_eq!(store.get_policy(&other, policy.id).await.unwrap(), None);
        assert!(store.list_policies(&other, Page::default()).await.unwrap().is_empty());
        let hijacked = Policy { tenant: other.clone(), name: "hijacked".into(), ..policy.clone() };
        assert_not_found(store.update_policy(&hijacked).await, "policy");
        assert_not_found(store.delete_policy(&other, policy.id).await, "policy");

        assert!(store.list_scopes(&other).await.unwrap().is_empty());
        assert_not_found(store.delete_scope(&other, scope.id).await, "scope");

        let all = TimeRange::default();
        assert!(store.list_usage(&other, id, all, Page::default()).await.unwrap().is_empty());
        assert!(store.usage_aggregates(&other, id, Period::Day, all).await.unwrap().is_empty());
        assert!(store.tenant_usage(&other, Period::Month, all).await.unwrap().is_empty());
        assert!(store.list_rotations(&other, rotated.key.id).await.unwrap().is_empty());
        assert!(store.list_rotations(&other, rotation.new_key.key.id).await.unwrap().is_empty());
    }

    // Nothing changed for acme.
    assert_eq!(store.get_key(&acme(), key.key.id).await.unwrap(), Some(key.clone()));
    assert_eq!(store.get_policy(&acme(), policy.id).await.unwrap().as_deref(), Some(&policy));
    assert_eq!(store.list_scopes(&acme()).await.unwrap(), vec![scope]);
    assert_eq!(store.list_rotations(&acme(), rotated.key.id).await.unwrap().len(), 1);
    let all = TimeRange::default();
    assert_eq!(store.list_usage(&acme(), key.key.id, all, Page::default()).await.unwrap().len(), 1);
}

/// Listings filter by state, environment and policy, in id order, by page.
pub async fn list_keys_filters_orders_and_paginates(store: Arc<dyn Store>) {
    let policy = bare_policy(&acme(), "p");
    store.insert_policy(&policy).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..7 {
        let key = modified(&sample_key(&acme()), |k| {
            k.environment = if i % 2 == 0 { Environment::Live } else { Environment::Test };
            k.policy_id = (i < 3).then_some(policy.id);
        });
        ids.push(insert(&store, key).await.key.id);
    }
    insert(&store, sample_key(&globex())).await;
    store.transition_key(&acme(), ids[1], &Transition::to(KeyState::Suspended, at(1))).await.unwrap();
    store.transition_key(&acme(), ids[4], &Transition::to(KeyState::Revoked, at(1))).await.unwrap();

    let list = |filter: KeyFilter| {
        let store = Arc::clone(&store);
        async move { store.list_keys(&acme(), &filter).await.unwrap().iter().map(|k| k.id).collect::<Vec<_>>() }
    };
    assert_eq!(list(KeyFilter::default()).await, ids, "all of acme's keys, oldest first");
    assert_eq!(
        list(KeyFilter { state: Some(KeyState::Active), ..KeyFilter::default() }).await,
        [ids[0], ids[2], ids[3], ids[5], ids[6]]
    );
    assert_eq!(list(KeyFilter { state: Some(KeyState::Suspended), ..KeyFilter::default() }).await, [ids[1]]);
    assert_eq!(
        list(KeyFilter { environment: Some(Environment::Test), ..KeyFilter::default() }).await,
        [ids[1], ids[3], ids[5]]
    );
    assert_eq!(list(KeyFilter { policy_id: Some(policy.id), ..KeyFilter::default() }).await, [ids[0], ids[1], ids[2]]);
    let combined = KeyFilter {
        state: Some(KeyState::Active),
        environment: Some(Environment::Live),
        policy_id: Some(policy.id),
        ..KeyFilter::default()
    };
    assert_eq!(list(combined).await, [ids[0], ids[2]]);
    assert!(list(KeyFilter { state: Some(KeyState::Expired), ..KeyFilter::default() }).await.is_empty());

    assert_eq!(list(page(3, 0)).await, ids[..3]);
    assert_eq!(list(page(3, 3)).await, ids[3..6]);
    assert_eq!(list(page(3, 6)).await, ids[6..]);
    assert!(list(page(3, 7)).await.is_empty());
    assert!(list(page(0, 0)).await.is_empty());
    assert_eq!(list(page(2, 1)).await, ids[1..3]);
}

/// The owner filter matches the owner id exactly, within the tenant, and
/// combines with the other filters.
pub async fn list_keys_filters_by_owner_within_the_tenant(store: Arc<dyn Store>) {
    let owned =
        |tenant: &Tenant, owner: Option<&str>| modified(&sample_key(tenant), |k| k.owner_id = owner.map(str::to_owned));
    let a1 = insert(&store, owned(&acme(), Some("cus_a"))).await.key.id;
    insert(&store, owned(&acme(), Some("cus_b"))).await;
    insert(&store, owned(&acme(), None)).await;
    let a2 = insert(&store, owned(&acme(), Some("cus_a"))).await.key.id;
    insert(&store, owned(&acme(), Some("CUS_A"))).await;
    insert(&store, owned(&globex(), Some("cus_a"))).await;
    store.transition_key(&acme(), a2, &Transition::to(KeyState::Suspended, at(1))).await.unwrap();

    let list = |filter: KeyFilter| {
        let store = Arc::clone(&store);
        async move { store.list_keys(&acme(), &filter).await.unwrap().iter().map(|k| k.id).collect::<Vec<_>>() }
    };
    let of = |owner: &str| KeyFilter { owner_id: Some(owner.into()), ..KeyFilter::default() };
    assert_eq!(list(of("cus_a")).await, [a1, a2], "exact match, this tenant only, oldest first");
    let suspended = KeyFilter { state: Some(KeyState::Suspended), ..of("cus_a") };
    assert_eq!(list(suspended).await, [a2]);
    assert!(list(of("cus_")).await.is_empty(), "no prefix match");
    let got = store.get_key(&acme(), a1).await.unwrap().unwrap();
    assert_eq!(got.key.owner_id.as_deref(), Some("cus_a"));
}

#[track_caller]
pub(super) fn assert_owner_key_limit<T: std::fmt::Debug>(
    result: keysmith_core::Result<T>, policy: &Policy, limit: u32,
) {
    match result {
        Err(Error::OwnerKeyLimit { policy_id, limit: l, .. }) if policy_id == policy.id && l == limit => {}
        other => panic!("expected OwnerKeyLimit {{ limit: {limit} }}, got {other:?}"),
    }
}

/// A policy's `max_active_keys_per_owner` counts the owner's `active` and
/// `suspended` keys under that policy, in that tenant; rotated, revoked and
/// expired keys free their place, and a rotation keeps the count.
pub async fn owner_key_limit_counts_live_keys_under_the_policy(store: Arc<dyn Store>) {
    let policy = Policy { max_active_keys_per_owner: Some(2), ..bare_policy(&acme(), "two per owner") };
    let other = bare_policy(&acme(), "unlimited");
    store.insert_policy(&policy).await.unwrap();
    store.insert_policy(&other).await.unwrap();
    let owned = |owner: Option<&str>, policy: &Policy| {
        modified(&sample_key(&acme()), |k| {
            k.owner_id = owner.map(str::to_owned);
            k.policy_id = Some(policy.id);
        })
    };
    let first = insert(&store, owned(Some("cus_a"), &policy)).await;
    let second = insert(&store, owned(Some("cus_a"), &policy)).await;
    let refused = owned(Some("cus_a"), &policy);
    assert_owner_key_limit(store.insert_key(&refused).await, &policy, 2);
    assert_eq!(store.find_key_by_hash(&refused.hash).await.unwrap(), None, "a refused key is not stored");
    // Other owners, keys without an owner and other policies are not counted.
    insert(&store, owned(Some("cus_b"), &policy)).await;
    insert(&store, owned(None, &policy)).await;
    insert(&store, owned(None, &policy)).await;
    insert(&store, owned(Some("cus_a"), &other)).await;

    // A suspended key keeps its place (it can be reactivated).
    store.transition_key(&acme(), second.key.id, &Transition::to(KeyState::Suspended, at(1))).await.unwrap();
    assert_owner_key_limit(store.insert_key(&owned(Some("cus_a"), &policy)).await, &policy, 2);
    // A rotation keeps the count: the rotated key no longer counts, its replacement does.
    store.rotate_key(&acme(), &rotation_of(&first, 2, Duration::from_secs(3600))).await.unwrap();
    assert_owner_key_limit(store.insert_key(&owned(Some("cus_a"), &policy)).await, &policy, 2);
    // A revoked key frees its place.
    store.transition_key(&acme(), second.key.id, &Transition::to(KeyState::Revoked, at(3))).await.unwrap();
    insert(&store, owned(Some("cus_a"), &policy)).await;
    assert_owner_key_limit(store.insert_key(&owned(Some("cus_a"), &policy)).await, &policy, 2);
    // So does a key past its expiry that nothing has marked expired yet.
    let expired = modified(&owned(Some("cus_c"), &policy), |k| k.expires_at = Some(t0()));
    insert(&store, expired.clone()).await;
    insert(&store, modified(&owned(Some("cus_c"), &policy), |k| k.created_at = at(10))).await;
    insert(&store, modified(&owned(Some("cus_c"), &policy), |k| k.created_at = at(10))).await;

    // The limit is the policy's own: another tenant's owner of that name is not counted.
    let globex_policy = Policy { max_active_keys_per_owner: Some(1), ..bare_policy(&globex(), "one") };
    store.insert_policy(&globex_policy).await.unwrap();
    let globex_key = || {
        modified(&sample_key(&globex()), |k| {
            k.owner_id = Some("cus_a".into());
            k.policy_id = Some(globex_policy.id);
        })
    };
    insert(&store, globex_key()).await;
    assert_owner_key_limit(store.insert_key(&globex_key()).await, &globex_policy, 1);
}

/// With a limit of 1, 32 concurrent creations for one owner leave exactly
/// one live key: the check and the insert are one atomic step.
pub async fn concurrent_creations_for_one_owner_leave_exactly_the_limit(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let policy = Policy { max_active_keys_per_owner: Some(1), ..bare_policy(&acme(), "one per owner") };
    store.insert_policy(&policy).await.unwrap();
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for _ in 0..RACERS {
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        let key = modified(&sample_key(&acme()), |k| {
            k.owner_id = Some("cus_racer".into());
            k.policy_id = Some(policy.id);
        });
        tasks.spawn(async move {
            barrier.wait().await;
            store.insert_key(&key).await
        });
    }
    let mut created = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(()) => created += 1,
            refused => assert_owner_key_limit(refused, &policy, 1),
        }
    }
    assert_eq!(created, 1, "exactly one creation wins");
    let of_owner = KeyFilter { owner_id: Some("cus_racer".into()), ..KeyFilter::default() };
    assert_eq!(store.list_keys(&acme(), &of_owner).await.unwrap().len(), 1, "one key is stored");
}
