//! Credits: a lineage's and an owner's, spent atomically, refilled, topped up.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(super) fn with_credits(stored: &StoredKey, credits: Credits) -> StoredKey {
    modified(stored, |k| k.credits = Some(credits))
}

pub(super) async fn credits_of(store: &Arc<dyn Store>, key: &StoredKey) -> Option<Credits> {
    store.get_key(&key.key.tenant, key.key.id).await.unwrap().expect("key exists").key.credits
}

/// Credits are stored with the key, read with it (by id, by hash, in
/// listings), shared by its rotation's replacement, and set or removed as
/// a whole; a lineage without credits spends nothing.
pub async fn credits_belong_to_the_lineage_and_can_be_set_or_removed(store: Arc<dyn Store>) {
    let credits = Credits::new(5);
    let old = insert(&store, with_credits(&sample_key(&acme()), credits)).await;
    assert_eq!(credits_of(&store, &old).await, Some(credits));
    let found = store.find_key_by_hash(&old.hash).await.unwrap().unwrap();
    assert_eq!(found.key.credits, Some(credits));

    let rotation = rotation_of(&old, 10, Duration::from_secs(3600));
    store.rotate_key(&acme(), &rotation).await.unwrap();
    let new = rotation.new_key;
    assert_eq!(credits_of(&store, &new).await, Some(credits), "the replacement shares the credits");
    let spent = store.spend_credits(&old.key, 2, at(11)).await.unwrap();
    assert_eq!(spent, CreditSpend::Spent(Credits::new(3)), "the old secret spends from the same credits");
    assert_eq!(credits_of(&store, &new).await, Some(Credits::new(3)));
    let listed = store.list_keys(&acme(), &KeyFilter::default()).await.unwrap();
    assert!(listed.iter().all(|k| k.credits == Some(Credits::new(3))), "{listed:?}");

    let refill = Credits { refilled_at: Some(t0()), ..Credits::new(7).with_refill(100, Period::Month) };
    let set = store.set_credits(&acme(), new.key.id, Some(&refill)).await.unwrap();
    assert_eq!(set.credits, Some(refill));
    assert_eq!(credits_of(&store, &old).await, Some(refill));
    let removed = store.set_credits(&acme(), old.key.id, None).await.unwrap();
    assert_eq!(removed.credits, None);
    assert_eq!(credits_of(&store, &new).await, None);
    assert_eq!(store.spend_credits(&new.key, 1, at(12)).await.unwrap(), CreditSpend::Unlimited);

    // Another tenant's key is not found, and nothing changes.
    assert_not_found(store.set_credits(&globex(), new.key.id, Some(&credits)).await, "key");
    assert_not_found(store.add_credits(&globex(), new.key.id, 1, at(12)).await, "key");
    assert_eq!(credits_of(&store, &new).await, None);
}

/// 32 concurrent spends of credits that pay for 10: exactly 10 pass, the
/// others find them exhausted, and nothing goes below zero.
pub async fn concurrent_spends_never_take_credits_below_zero(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let key = insert(&store, with_credits(&sample_key(&acme()), Credits::new(10))).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for _ in 0..RACERS {
        let (store, barrier, key) = (Arc::clone(&store), Arc::clone(&barrier), Arc::clone(&key.key));
        tasks.spawn(async move {
            barrier.wait().await;
            store.spend_credits(&key, 1, at(1)).await.unwrap()
        });
    }
    assert_eq!(tally_spends(tasks, 10).await, (10, RACERS - 10));
    assert_eq!(credits_of(&store, &key).await, Some(Credits::new(0)));
    // A cost larger than what is left spends nothing.
    store.add_credits(&acme(), key.key.id, 3, at(2)).await.unwrap();
    assert_eq!(store.spend_credits(&key.key, 4, at(2)).await.unwrap(), CreditSpend::Exhausted(Credits::new(3)));
    assert_eq!(store.spend_credits(&key.key, 3, at(2)).await.unwrap(), CreditSpend::Spent(Credits::new(0)));
}

/// How many of the racing spends of credits that began at `start` passed
/// and how many found them exhausted (at zero).
pub(super) async fn tally_spends(mut tasks: JoinSet<CreditSpend>, start: u64) -> (usize, usize) {
    let (mut spent, mut exhausted) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            CreditSpend::Spent(credits) => {
                assert!(credits.remaining < start);
                spent += 1;
            }
            CreditSpend::Exhausted(credits) => {
                assert_eq!(credits.remaining, 0);
                exhausted += 1;
            }
            CreditSpend::Unlimited => panic!("the credits were set"),
        }
    }
    (spent, exhausted)
}

/// A refill resets `remaining` to its amount with the first spend (or
/// top-up) of a new UTC period, once; top-ups add within bounds; a refund
/// gives back, never past the bound.
pub async fn credits_refill_on_the_utc_period_boundary_and_top_up(store: Arc<dyn Store>) {
    let today = Period::Day.start_of(t0());
    let tomorrow = Period::Day.next_start(t0());
    let credits = Credits { refilled_at: Some(today), ..Credits::new(2).with_refill(5, Period::Day) };
    let key = insert(&store, with_credits(&sample_key(&acme()), credits)).await;
    let left = |remaining, refilled_at| Credits { remaining, refilled_at: Some(refilled_at), ..credits };

    assert_eq!(store.spend_credits(&key.key, 2, at(1)).await.unwrap(), CreditSpend::Spent(left(0, today)));
    assert_eq!(store.spend_credits(&key.key, 1, at(2)).await.unwrap(), CreditSpend::Exhausted(left(0, today)));
    let just_before = tomorrow - chrono::Duration::microseconds(1);
    assert_eq!(store.spend_credits(&key.key, 1, just_before).await.unwrap(), CreditSpend::Exhausted(left(0, today)));
    assert_eq!(store.spend_credits(&key.key, 1, tomorrow).await.unwrap(), CreditSpend::Spent(left(4, tomorrow)));
    assert_eq!(
        store.spend_credits(&key.key, 1, tomorrow).await.unwrap(),
        CreditSpend::Spent(left(3, tomorrow)),
        "one refill per period"
    );

    store.refund_credits(&key.key, 1).await.unwrap();
    assert_eq!(credits_of(&store, &key).await, Some(left(4, tomorrow)));
    // A top-up in a later period refills first, then adds.
    let next_day = Period::Day.next_start(tomorrow);
    let topped = store.add_credits(&acme(), key.key.id, 10, next_day).await.unwrap();
    assert_eq!(topped.credits, Some(left(15, next_day)));
    match store.add_credits(&acme(), key.key.id, Credits::MAX, next_day).await {
        Err(Error::InvalidInput { field: "amount", .. }) => {}
        other => panic!("expected InvalidInput for amount, got {other:?}"),
    }
    assert_eq!(credits_of(&store, &key).await, Some(left(15, next_day)), "a refused top-up changes nothing");
    store.refund_credits(&key.key, Credits::MAX).await.unwrap();
    assert_eq!(credits_of(&store, &key).await, Some(left(Credits::MAX, next_day)), "a refund stops at the bound");

    let plain = insert(&store, sample_key(&acme())).await;
    match store.add_credits(&acme(), plain.key.id, 1, next_day).await {
        Err(Error::InvalidInput { field: "credits", .. }) => {}
        other => panic!("expected InvalidInput for credits, got {other:?}"),
    }
    assert_eq!(credits_of(&store, &plain).await, None);
}

/// An owner's credits are its own within its tenant: the same owner id in
/// another tenant or application has none, a lineage's credits are apart,
/// and setting `None` removes them (nothing left to spend).
pub async fn owner_credits_are_per_tenant_and_owner_and_can_be_set_or_removed(store: Arc<dyn Store>) {
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), None);
    assert_eq!(store.spend_owner_credits(&acme(), "cust-1", 1, at(1)).await.unwrap(), CreditSpend::Unlimited);
    let credits = Credits::new(5);
    store.set_owner_credits(&acme(), "cust-1", Some(&credits)).await.unwrap();
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), Some(credits));
    for (tenant, owner) in [(acme(), "cust-2"), (globex(), "cust-1"), (acme_elsewhere(), "cust-1"), (acme(), "CUST-1")]
    {
        assert_eq!(store.owner_credits(&tenant, owner).await.unwrap(), None, "{tenant:?} {owner}");
        assert_eq!(store.spend_owner_credits(&tenant, owner, 1, at(1)).await.unwrap(), CreditSpend::Unlimited);
        store.refund_owner_credits(&tenant, owner, 1).await.unwrap();
        match store.add_owner_credits(&tenant, owner, 1, at(1)).await {
            Err(Error::InvalidInput { field: "credits", .. }) => {}
            other => panic!("expected InvalidInput for credits, got {other:?}"),
        }
        assert_eq!(store.owner_credits(&tenant, owner).await.unwrap(), None, "nothing was created");
    }
    // A key's lineage credits are not the owner's.
    let key = insert(&store, modified(&sample_key(&acme()), |k| k.owner_id = Some("cust-1".into()))).await;
    assert_eq!(credits_of(&store, &key).await, None);
    assert_eq!(store.spend_credits(&key.key, 1, at(2)).await.unwrap(), CreditSpend::Unlimited);

    let spent = store.spend_owner_credits(&acme(), "cust-1", 2, at(2)).await.unwrap();
    assert_eq!(spent, CreditSpend::Spent(Credits::new(3)));
    store.refund_owner_credits(&acme(), "cust-1", 1).await.unwrap();
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), Some(Credits::new(4)));
    let refill =
        Credits { refilled_at: Some(Period::Month.start_of(t0())), ..Credits::new(7).with_refill(9, Period::Month) };
    store.set_owner_credits(&acme(), "cust-1", Some(&refill)).await.unwrap();
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), Some(refill), "replaced whole");
    store.set_owner_credits(&acme(), "cust-1", None).await.unwrap();
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), None);
    assert_eq!(store.spend_owner_credits(&acme(), "cust-1", 1, at(3)).await.unwrap(), CreditSpend::Unlimited);
    store.set_owner_credits(&acme(), "cust-1", None).await.unwrap();
}

/// 32 concurrent spends of an owner's credits that pay for 10: exactly 10
/// pass, the others find them exhausted, and nothing goes below zero.
pub async fn concurrent_spends_never_take_owner_credits_below_zero(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    store.set_owner_credits(&acme(), "cust-1", Some(&Credits::new(10))).await.unwrap();
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = JoinSet::new();
    for _ in 0..RACERS {
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        tasks.spawn(async move {
            barrier.wait().await;
            store.spend_owner_credits(&acme(), "cust-1", 1, at(1)).await.unwrap()
        });
    }
    assert_eq!(tally_spends(tasks, 10).await, (10, RACERS - 10));
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), Some(Credits::new(0)));
    // A cost larger than what is left spends nothing.
    assert_eq!(store.add_owner_credits(&acme(), "cust-1", 3, at(2)).await.unwrap(), Credits::new(3));
    let too_much = store.spend_owner_credits(&acme(), "cust-1", 4, at(2)).await.unwrap();
    assert_eq!(too_much, CreditSpend::Exhausted(Credits::new(3)));
    let all = store.spend_owner_credits(&acme(), "cust-1", 3, at(2)).await.unwrap();
    assert_eq!(all, CreditSpend::Spent(Credits::new(0)));
}

/// An owner's refill resets `remaining` with the first spend (or top-up)
/// of a new UTC period, once; top-ups add within bounds; a refund gives
/// back, never past the bound.
pub async fn owner_credits_refill_on_the_utc_period_boundary_and_top_up(store: Arc<dyn Store>) {
    let today = Period::Day.start_of(t0());
    let tomorrow = Period::Day.next_start(t0());
    let credits = Credits { refilled_at: Some(today), ..Credits::new(2).with_refill(5, Period::Day) };
    store.set_owner_credits(&acme(), "cust-1", Some(&credits)).await.unwrap();
    let left = |remaining, refilled_at| Credits { remaining, refilled_at: Some(refilled_at), ..credits };
    let spend = |cost, now| {
        let store = Arc::clone(&store);
        async move { store.spend_owner_credits(&acme(), "cust-1", cost, now).await.unwrap() }
    };

    assert_eq!(spend(2, at(1)).await, CreditSpend::Spent(left(0, today)));
    assert_eq!(spend(1, at(2)).await, CreditSpend::Exhausted(left(0, today)));
    let just_before = tomorrow - chrono::Duration::microseconds(1);
    assert_eq!(spend(1, just_before).await, CreditSpend::Exhausted(left(0, today)));
    assert_eq!(spend(1, tomorrow).await, CreditSpend::Spent(left(4, tomorrow)));
    assert_eq!(spend(1, tomorrow).await, CreditSpend::Spent(left(3, tomorrow)), "one refill per period");

    store.refund_owner_credits(&acme(), "cust-1", 1).await.unwrap();
    assert_eq!(store.owner_credits(&acme(), "cust-1").await.unwrap(), Some(left(4, tomorrow)));
    // A top-up in a later period refills first, then adds.
    let next_day = Period::Day.next_start(tomorrow);
    assert_eq!(store.add_owner_credits(&acme(), "cust-1", 10, next_day).await.unwrap(), left(15, next_day));
    match store.add_owner_credits(&acme(), "cust-1", Credits::MAX, next_day).await {
        Err(Error::InvalidInput { field: "amount", .. }) => {}
        other => panic!("expected InvalidInput for amount, got {other:?}"),
    }
    let stored = store.owner_credits(&acme(), "cust-1").await.unwrap();
    assert_eq!(stored, Some(left(15, next_day)), "a refused top-up changes nothing");
    store.refund_owner_credits(&acme(), "cust-1", Credits::MAX).await.unwrap();
    let stored = store.owner_credits(&acme(), "cust-1").await.unwrap();
    assert_eq!(stored, Some(left(Credits::MAX, next_day)), "a refund stops at the bound");
}
