//! Usage: batches, roll-ups, queries, lineage and owner totals.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Records are kept as written and rolled up per key into UTC days and
/// months, errors being statuses of 400 and above.
pub async fn usage_batches_roll_up_into_days_and_months(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let other_key = insert(&store, sample_key(&acme())).await;
    let theirs = insert(&store, sample_key(&globex())).await;
    let day = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 3, d, h, 30, 0).unwrap();

    let mut records = vec![
        usage(&key.key, day(15, 0), 200),
        usage(&key.key, day(15, 23), 399),
        usage(&key.key, day(15, 12), 400),
        usage(&key.key, day(16, 1), 503),
        usage(&key.key, Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap(), 201),
        usage(&other_key.key, day(15, 8), 404),
        usage(&theirs.key, day(15, 9), 500),
    ];
    records[1].ip = Some("2001:db8::1".parse().unwrap());
    records[1].user_agent = None;
    records[2].ip = None;
    records[2].method = "POST".into();
    records[2].latency = Duration::from_millis(1234);
    store.record_batch(&records).await.unwrap();

    let all = TimeRange::default();
    let listed = store.list_usage(&acme(), key.key.id, all, Page::default()).await.unwrap();
    let mut expected: Vec<UsageRecord> = records[..5].to_vec();
    expected.sort_by_key(|r| r.timestamp);
    assert_eq!(listed, expected, "records round-trip, oldest first");

    let days = store.usage_aggregates(&acme(), key.key.id, Period::Day, all).await.unwrap();
    let summary: Vec<_> = days.iter().map(|a| (a.period_start, a.requests, a.errors)).collect();
    assert_eq!(
        summary,
        [
            (Utc.with_ymd_and_hms(2026, 3, 15, 0, 0, 0).unwrap(), 3, 1),
            (Utc.with_ymd_and_hms(2026, 3, 16, 0, 0, 0).unwrap(), 1, 1),
            (Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap(), 1, 0),
        ]
    );
    assert!(days.iter().all(|a| a.key_id == key.key.id && a.tenant == acme() && a.period == Period::Day));

    let months = store.usage_aggregates(&acme(), key.key.id, Period::Month, all).await.unwrap();
    let summary: Vec<_> = months.iter().map(|a| (a.period_start, a.requests, a.errors)).collect();
    assert_eq!(
        summary,
        [
            (Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(), 4, 2),
            (Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap(), 1, 0),
        ]
    );

    let totals = store.tenant_usage(&acme(), Period::Day, all).await.unwrap();
    let summary: Vec<_> = totals.iter().map(|t| (t.period_start, t.requests, t.errors)).collect();
    assert_eq!(
        summary,
        [
            (Utc.with_ymd_and_hms(2026, 3, 15, 0, 0, 0).unwrap(), 4, 2),
            (Utc.with_ymd_and_hms(2026, 3, 16, 0, 0, 0).unwrap(), 1, 1),
            (Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap(), 1, 0),
        ]
    );
    let monthly = store.tenant_usage(&acme(), Period::Month, all).await.unwrap();
    assert_eq!(monthly.iter().map(|t| (t.requests, t.errors)).collect::<Vec<_>>(), [(5, 3), (1, 0)]);
    assert!(monthly.iter().all(|t| t.period == Period::Month));
    let theirs_total = store.tenant_usage(&globex(), Period::Month, all).await.unwrap();
    assert_eq!(theirs_total.iter().map(|t| (t.requests, t.errors)).collect::<Vec<_>>(), [(1, 1)]);

    store.record_batch(&[]).await.unwrap();
}

/// Batches add up; every record counts once, in its day and its month, also
/// when a retried batch brings it again.
pub async fn usage_batches_accumulate_and_count_each_record_once(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let first: Vec<_> = (0..3).map(|i| usage(&key.key, at(i), if i == 0 { 500 } else { 200 })).collect();
    let second: Vec<_> = (3..5).map(|i| usage(&key.key, at(i), 429)).collect();
    store.record_batch(&first).await.unwrap();
    store.record_batch(&second).await.unwrap();
    // A retried batch that repeats stored records and brings new ones adds only the new ones.
    let retried = [first[1].clone(), usage(&key.key, at(5), 404), first[0].clone(), usage(&key.key, at(6), 200)];
    store.record_batch(&retried).await.unwrap();

    let all = TimeRange::default();
    for period in [Period::Day, Period::Month] {
        let aggregates = store.usage_aggregates(&acme(), key.key.id, period, all).await.unwrap();
        assert_eq!(aggregates.len(), 1, "{period}");
        assert_eq!((aggregates[0].requests, aggregates[0].errors), (7, 4), "{period}");
        assert_eq!(aggregates[0].period_start, period.start_of(t0()));
    }
    assert_eq!(store.list_usage(&acme(), key.key.id, all, Page::default()).await.unwrap().len(), 7);
}

/// A batch larger than any single statement's bound-variable limit is
/// written whole.
pub async fn large_usage_batch_is_written_whole(store: Arc<dyn Store>) {
    const RECORDS: usize = 2_500;
    let keys = [insert(&store, sample_key(&acme())).await, insert(&store, sample_key(&acme())).await];
    let records: Vec<_> = (0..RECORDS)
        .map(|i| {
            let secs = i64::try_from(i).unwrap() * 60; // spans three days
            usage(&keys[i % 2].key, at(secs), if i.is_multiple_of(10) { 500 } else { 200 })
        })
        .collect();
    store.record_batch(&records).await.unwrap();

    let all = TimeRange::default();
    let totals = store.tenant_usage(&acme(), Period::Month, all).await.unwrap();
    assert_eq!(totals.iter().map(|t| (t.requests, t.errors)).collect::<Vec<_>>(), [(2_500, 250)]);
    let days = store.tenant_usage(&acme(), Period::Day, all).await.unwrap();
    assert_eq!(days.iter().map(|t| t.requests).sum::<u64>(), 2_500);
    let mut seen = HashSet::new();
    let mut offset = 0;
    loop {
        let page = store.list_usage(&acme(), keys[0].key.id, all, Page::new(Page::MAX_LIMIT, offset)).await.unwrap();
        if page.is_empty() {
            break;
        }
        offset += page.len() as u64;
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen.len(), RECORDS / 2);
}

/// Usage and aggregates filter by a half-open time range and paginate.
pub async fn usage_queries_filter_by_range_and_paginate(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let records: Vec<_> = (0..10).map(|i| usage(&key.key, at(i * 3600), 200)).collect();
    store.record_batch(&records).await.unwrap();
    let ids = |records: Vec<UsageRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all_ids = ids(records.clone());

    let range = TimeRange { from: Some(at(2 * 3600)), to: Some(at(5 * 3600)) };
    let listed = store.list_usage(&acme(), key.key.id, range, Page::default()).await.unwrap();
    assert_eq!(ids(listed), all_ids[2..5], "from is inclusive, to exclusive");
    let open_end = TimeRange { from: Some(at(8 * 3600)), to: None };
    assert_eq!(ids(store.list_usage(&acme(), key.key.id, open_end, Page::default()).await.unwrap()), all_ids[8..]);
    let open_start = TimeRange { from: None, to: Some(at(3600)) };
    assert_eq!(ids(store.list_usage(&acme(), key.key.id, open_start, Page::default()).await.unwrap()), all_ids[..1]);
    let paged = store.list_usage(&acme(), key.key.id, TimeRange::default(), Page::new(4, 4)).await.unwrap();
    assert_eq!(ids(paged), all_ids[4..8]);
    assert!(store.list_usage(&acme(), KeyId::new(), TimeRange::default(), Page::default()).await.unwrap().is_empty());

    // Aggregates: by the start of their period.
    let mut later = usage(&key.key, at(3 * 86_400), 200);
    later.timestamp = Utc.with_ymd_and_hms(2026, 3, 18, 1, 0, 0).unwrap();
    store.record_batch(&[later]).await.unwrap();
    let day = |d: u32| Some(Utc.with_ymd_and_hms(2026, 3, d, 0, 0, 0).unwrap());
    let range = TimeRange { from: day(16), to: day(19) };
    let days = store.usage_aggregates(&acme(), key.key.id, Period::Day, range).await.unwrap();
    assert_eq!(days.iter().map(|a| (a.period_start, a.requests)).collect::<Vec<_>>(), [(day(18).unwrap(), 1)]);
    let up_to = TimeRange { from: None, to: day(18) };
    let days = store.usage_aggregates(&acme(), key.key.id, Period::Day, up_to).await.unwrap();
    assert_eq!(days.iter().map(|a| a.requests).collect::<Vec<_>>(), [10]);
    let totals = store.tenant_usage(&acme(), Period::Day, range).await.unwrap();
    assert_eq!(totals.iter().map(|t| t.requests).collect::<Vec<_>>(), [1]);
    let month = TimeRange { from: day(2), to: None };
    assert!(store.usage_aggregates(&acme(), key.key.id, Period::Month, month).await.unwrap().is_empty());
}

/// A lineage's usage is the sum over every key rotation made from its first
/// key, per period, and nothing of other keys or tenants.
pub async fn lineage_usage_sums_every_key_of_the_lineage(store: Arc<dyn Store>) {
    let first = insert(&store, sample_key(&acme())).await;
    let rotation = rotation_of(&first, 10, Duration::from_secs(3600));
    store.rotate_key(&acme(), &rotation).await.unwrap();
    let second = store.get_key(&acme(), rotation.new_key.key.id).await.unwrap().unwrap();
    assert_eq!(second.key.lineage_id, first.key.id, "the new key keeps the lineage");
    let other = insert(&store, sample_key(&acme())).await;
    let next_day = 86_400 + 5;
    let batch = [
        usage(&first.key, at(20), 200),
        usage(&second.key, at(30), 500),
        usage(&second.key, at(next_day), 200),
        usage(&other.key, at(40), 200),
    ];
    store.record_batch(&batch).await.unwrap();

    let all = TimeRange::default();
    let lineage = first.key.id;
    let totals = |period, range| {
        let store = Arc::clone(&store);
        async move {
            let totals = store.lineage_usage(&acme(), lineage, period, range).await.unwrap();
            totals.into_iter().map(|t| (t.period_start, t.requests, t.errors)).collect::<Vec<_>>()
        }
    };
    let today = Period::Day.start_of(t0());
    let tomorrow = Period::Day.next_start(t0());
    assert_eq!(totals(Period::Day, all).await, [(today, 2, 1), (tomorrow, 1, 0)]);
    assert_eq!(totals(Period::Month, all).await, [(Period::Month.start_of(t0()), 3, 1)]);
    let from_tomorrow = TimeRange { from: Some(tomorrow), to: None };
    assert_eq!(totals(Period::Day, from_tomorrow).await, [(tomorrow, 1, 0)]);

    let requests = |tenant: Tenant, lineage: KeyId| {
        let store = Arc::clone(&store);
        async move {
            let totals = store.lineage_usage(&tenant, lineage, Period::Month, all).await.unwrap();
            totals.iter().map(|t| t.requests).sum::<u64>()
        }
    };
    assert_eq!(requests(acme(), other.key.id).await, 1);
    assert_eq!(requests(acme(), second.key.id).await, 0, "a successor's own id names no lineage");
    assert_eq!(requests(globex(), lineage).await, 0, "another tenant sees nothing");
}

/// An owner's usage is the sum over every key of the tenant that carries
/// its id (rotated successors included), per period, and nothing of other
/// owners, ownerless keys or another tenant's (or app's) owner of that id.
pub async fn owner_usage_sums_every_key_of_the_owner_in_the_tenant(store: Arc<dyn Store>) {
    let owned =
        |tenant: &Tenant, owner: Option<&str>| modified(&sample_key(tenant), |k| k.owner_id = owner.map(str::to_owned));
    let first = insert(&store, owned(&acme(), Some("cus_a"))).await;
    let second = insert(&store, owned(&acme(), Some("cus_a"))).await;
    let rotation = rotation_of(&second, 10, Duration::from_secs(3600));
    store.rotate_key(&acme(), &rotation).await.unwrap();
    let successor = store.get_key(&acme(), rotation.new_key.key.id).await.unwrap().unwrap();
    assert_eq!(successor.key.owner_id.as_deref(), Some("cus_a"), "rotation keeps the owner");
    let others = [
        insert(&store, owned(&acme(), Some("cus_b"))).await,
        insert(&store, owned(&acme(), Some("CUS_A"))).await,
        insert(&store, owned(&acme(), None)).await,
        insert(&store, owned(&globex(), Some("cus_a"))).await,
        insert(&store, owned(&acme_elsewhere(), Some("cus_a"))).await,
    ];
    let next_day = 86_400 + 5;
    let mut batch = vec![
        usage(&first.key, at(20), 200),
        usage(&second.key, at(30), 500),
        usage(&successor.key, at(40), 200),
        usage(&first.key, at(next_day), 200),
    ];
    batch.extend(others.iter().map(|k| usage(&k.key, at(50), 200)));
    store.record_batch(&batch).await.unwrap();

    let all = TimeRange::default();
    let totals = |tenant: Tenant, owner: &'static str, period, range| {
        let store = Arc::clone(&store);
        async move {
            let totals = store.owner_usage(&tenant, owner, period, range).await.unwrap();
            totals.into_iter().map(|t| (t.period_start, t.requests, t.errors)).collect::<Vec<_>>()
        }
    };
    let today = Period::Day.start_of(t0());
    let tomorrow = Period::Day.next_start(t0());
    assert_eq!(totals(acme(), "cus_a", Period::Day, all).await, [(today, 3, 1), (tomorrow, 1, 0)]);
    assert_eq!(totals(acme(), "cus_a", Period::Month, all).await, [(Period::Month.start_of(t0()), 4, 1)]);
    let from_tomorrow = TimeRange { from: Some(tomorrow), to: None };
    assert_eq!(totals(acme(), "cus_a", Period::Day, from_tomorrow).await, [(tomorrow, 1, 0)]);
    assert_eq!(totals(acme(), "cus_b", Period::Month, all).await, [(Period::Month.start_of(t0()), 1, 0)]);
    assert!(totals(acme(), "cus_", Period::Month, all).await.is_empty(), "no prefix match");
    assert!(totals(acme(), "nobody", Period::Month, all).await.is_empty());
    let elsewhere = totals(acme_elsewhere(), "cus_a", Period::Month, all).await;
    assert_eq!(elsewhere, [(Period::Month.start_of(t0()), 1, 0)], "another app's tenant of the same id counts its own");
}

/// Roll-ups are hourly too, and count passed requests by status class and
/// refusals (a batch's deltas) by reason; refusals are never requests, so no
/// quota (which reads `requests`) counts them. A batch replayed under its id
/// adds its deltas once, and its records once.
pub async fn outcomes_roll_up_by_hour_class_and_reason_and_a_replayed_batch_counts_once(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let at = |h: u32, m: u32| Utc.with_ymd_and_hms(2026, 3, 15, h, m, 0).unwrap();
    let records = [usage(&key.key, at(9, 5), 200), usage(&key.key, at(9, 59), 302), usage(&key.key, at(10, 0), 503)];
    let mut refused = UsageCounts::refused(RefusalReason::RateLimited);
    refused.add(&UsageCounts::refused(RefusalReason::RateLimited));
    refused.add(&UsageCounts::refused(RefusalReason::KeyExpired));
    let delta = UsageDelta { key_id: key.key.id, tenant: acme().into(), hour: at(9, 0), counts: refused };
    let batch = UsageBatch { id: UsageId::new(), records: &records, deltas: std::slice::from_ref(&delta) };
    store.write_usage(&batch).await.unwrap();
    store.write_usage(&batch).await.unwrap();

    let all = TimeRange::default();
    let hours = store.usage_aggregates(&acme(), key.key.id, Period::Hour, all).await.unwrap();
    assert_eq!(hours.iter().map(|h| h.period_start).collect::<Vec<_>>(), [at(9, 0), at(10, 0)]);
    let nine = &hours[0];
    assert_eq!((nine.requests, nine.errors, nine.status.success, nine.status.redirection), (2, 0, 1, 1));
    assert_eq!((nine.refused.rate_limited, nine.refused.key_expired, nine.refused.total()), (2, 1, 3));
    assert_eq!((hours[1].requests, hours[1].errors, hours[1].status.server_error), (1, 1, 1));
    assert_eq!(hours[1].refused.total(), 0);
    for period in [Period::Day, Period::Month] {
        let rows = store.usage_aggregates(&acme(), key.key.id, period, all).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].requests, rows[0].errors, rows[0].refused.total()), (3, 1, 3), "{period}");
        let totals = store.lineage_usage(&acme(), key.key.lineage_id, period, all).await.unwrap();
        assert_eq!((totals[0].requests, totals[0].refused.rate_limited), (3, 2), "quotas read requests only");
    }
    let tenant = store.tenant_usage(&acme(), Period::Hour, all).await.unwrap();
    assert_eq!(tenant.iter().map(|t| (t.requests, t.refused.total())).collect::<Vec<_>>(), [(2, 3), (1, 0)]);
    let listed = store.list_usage(&acme(), key.key.id, all, Page::default()).await.unwrap();
    assert_eq!(listed.len(), 3, "refusals leave no raw record; a replay adds none");

    // The same deltas under another batch id count again (a new batch).
    let again = UsageBatch { id: UsageId::new(), records: &[], deltas: std::slice::from_ref(&delta) };
    store.write_usage(&again).await.unwrap();
    let days = store.usage_aggregates(&acme(), key.key.id, Period::Day, all).await.unwrap();
    assert_eq!((days[0].requests, days[0].refused.total()), (3, 6));
}

/// The sweeper's deletes take only what expired, at most `limit` rows per
/// call: raw records numbered before the cutoff, hourly roll-ups starting
/// before it; daily and monthly roll-ups are untouched.
pub async fn retention_deletes_only_what_expired_in_bounded_batches(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let theirs = insert(&store, sample_key(&globex())).await;
    let at = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 3, d, h, 0, 0).unwrap();
    let mut records = Vec::new();
    for h in 0..5 {
        records.push(usage(&key.key, at(10, h), 200));
    }
    records.push(usage(&theirs.key, at(10, 1), 200));
    records.push(usage(&key.key, at(20, 1), 200));
    for record in &mut records {
        // Numbered when made, as the usage writer numbers them.
        record.id = UsageId::at(record.timestamp);
    }
    store.record_batch(&records).await.unwrap();
    let all = TimeRange::default();
    let cutoff = at(15, 0);

    assert_eq!(store.delete_usage_before(cutoff, 4).await.unwrap(), 4, "a bounded batch");
    assert_eq!(store.delete_usage_before(cutoff, 4).await.unwrap(), 2, "of every tenant");
    assert_eq!(store.delete_usage_before(cutoff, 4).await.unwrap(), 0);
    let left = store.list_usage(&acme(), key.key.id, all, Page::default()).await.unwrap();
    assert_eq!(left.iter().map(|r| r.timestamp).collect::<Vec<_>>(), [at(20, 1)]);

    assert_eq!(store.delete_aggregates_before(Period::Hour, cutoff, 3).await.unwrap(), 3);
    assert_eq!(store.delete_aggregates_before(Period::Hour, cutoff, 100).await.unwrap(), 3);
    let hours = store.usage_aggregates(&acme(), key.key.id, Period::Hour, all).await.unwrap();
    assert_eq!(hours.iter().map(|h| h.period_start).collect::<Vec<_>>(), [at(20, 1)]);
    let days = store.usage_aggregates(&acme(), key.key.id, Period::Day, all).await.unwrap();
    assert_eq!(days.iter().map(|d| d.requests).collect::<Vec<_>>(), [5, 1], "daily roll-ups untouched");
    let months = store.usage_aggregates(&acme(), key.key.id, Period::Month, all).await.unwrap();
    assert_eq!(months[0].requests, 6, "monthly roll-ups untouched");
    assert_eq!(store.tenant_usage(&globex(), Period::Day, all).await.unwrap()[0].requests, 1);
}

/// Batch ids (which make a replayed batch count once) are forgotten once
/// older than the records' cutoff, every one of them, however few records
/// expire: a batch of refusals alone writes no record.
pub async fn expired_batch_ids_are_forgotten_however_few_records_expire(store: Arc<dyn Store>) {
    let key = insert(&store, sample_key(&acme())).await;
    let hour = Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0).unwrap();
    let refused = UsageCounts::refused(RefusalReason::RateLimited);
    let delta = UsageDelta { key_id: key.key.id, tenant: acme().into(), hour, counts: refused };
    let batches: Vec<UsageBatch<'_>> =
        (0..5).map(|_| UsageBatch { id: UsageId::new(), records: &[], deltas: std::slice::from_ref(&delta) }).collect();
    for batch in &batches {
        store.write_usage(batch).await.unwrap();
    }
    let cutoff = Utc.with_ymd_and_hms(2026, 3, 15, 0, 0, 0).unwrap();
    assert_eq!(store.delete_usage_before(cutoff, 2).await.unwrap(), 0, "no record expired");

    // Replayed after their ids were forgotten, all five count again.
    for batch in &batches {
        store.write_usage(batch).await.unwrap();
    }
    let hours = store.usage_aggregates(&acme(), key.key.id, Period::Hour, TimeRange::default()).await.unwrap();
    assert_eq!(hours[0].refused.rate_limited, 10);
}
