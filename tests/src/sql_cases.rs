//! Cases for the SQL stores beyond the common contract: what a database
//! adds (idempotent batch replays, foreign keys).

use std::sync::Arc;
use std::time::Duration;

use keysmith_core::store::{Page, TimeRange};
use keysmith_core::{Error, KeyId, LimitBy, Period, Policy, PolicyId, RateLimit, Store, Tenant, UsageId, UsageRecord};

use crate::store_conformance::{sample_key, t0};

fn record(key_id: KeyId, tenant: &Tenant, offset_secs: i64, status: u16) -> UsageRecord {
    UsageRecord {
        id: UsageId::new(),
        key_id,
        tenant: tenant.into(),
        endpoint: "/v1/things".into(),
        method: "GET".into(),
        status,
        ip: None,
        user_agent: None,
        latency: Duration::from_millis(3),
        timestamp: t0() + chrono::Duration::seconds(offset_secs),
    }
}

/// A batch written twice (a retry after an unclear failure) is counted once,
/// and a record repeated inside a batch too.
///
/// # Panics
/// When the store does not behave so.
pub async fn replayed_usage_batch_is_counted_once(store: Arc<dyn Store>) {
    let tenant = Tenant::new("app", "acme");
    let key = sample_key(&tenant);
    store.insert_key(&key).await.unwrap();
    let mut batch: Vec<_> = (0..4).map(|i| record(key.key.id, &tenant, i, if i == 0 { 500 } else { 200 })).collect();
    batch.push(batch[1].clone());
    store.record_batch(&batch).await.unwrap();
    store.record_batch(&batch).await.unwrap();

    let all = TimeRange::default();
    assert_eq!(store.list_usage(&tenant, key.key.id, all, Page::default()).await.unwrap().len(), 4);
    for period in [Period::Day, Period::Month] {
        let aggregates = store.usage_aggregates(&tenant, key.key.id, period, all).await.unwrap();
        assert_eq!(aggregates.iter().map(|a| (a.requests, a.errors)).collect::<Vec<_>>(), [(4, 1)], "{period}");
    }
}

/// A record for a key that does not exist fails its batch, which writes
/// nothing.
///
/// # Panics
/// When the store does not behave so.
pub async fn usage_for_an_unknown_key_fails_the_whole_batch(store: Arc<dyn Store>) {
    let tenant = Tenant::new("app", "acme");
    let key = sample_key(&tenant);
    store.insert_key(&key).await.unwrap();
    let batch = vec![record(key.key.id, &tenant, 0, 200), record(KeyId::new(), &tenant, 1, 200)];
    assert!(matches!(store.record_batch(&batch).await, Err(Error::NotFound { entity: "key", .. })));
    let all = TimeRange::default();
    assert!(store.list_usage(&tenant, key.key.id, all, Page::default()).await.unwrap().is_empty());
    assert!(store.tenant_usage(&tenant, Period::Day, all).await.unwrap().is_empty());
}

/// Raw records have no foreign key (the store checks a batch's keys once),
/// yet a key deleted from the database, by hand or by a tenant's removal,
/// takes its usage with it: `delete` runs the backend's `DELETE` of the
/// key's row.
///
/// # Panics
/// When the store does not behave so.
pub async fn usage_of_a_deleted_key_goes_with_it<F: Future<Output = ()>>(
    store: Arc<dyn Store>, delete: impl FnOnce(uuid::Uuid) -> F,
) {
    let tenant = Tenant::new("app", "acme");
    let (gone, kept) = (sample_key(&tenant), sample_key(&tenant));
    for key in [&gone, &kept] {
        store.insert_key(key).await.unwrap();
        store.record_batch(&[record(key.key.id, &tenant, 0, 200), record(key.key.id, &tenant, 1, 200)]).await.unwrap();
    }
    delete(gone.key.id.uuid()).await;
    let all = TimeRange::default();
    assert!(store.list_usage(&tenant, gone.key.id, all, Page::default()).await.unwrap().is_empty());
    assert!(store.usage_aggregates(&tenant, gone.key.id, Period::Hour, all).await.unwrap().is_empty());
    assert_eq!(store.list_usage(&tenant, kept.key.id, all, Page::default()).await.unwrap().len(), 2);
    let totals = store.tenant_usage(&tenant, Period::Day, all).await.unwrap();
    assert_eq!(totals.iter().map(|t| t.requests).sum::<u64>(), 2, "only the kept key's usage is left");
}

/// Rows as a database written before key lineages holds them: keys `a`,
/// `b`, `c` (`a` rotated into `b`, `b` into `c`) and `d`, as SQL statements
/// of the first schema. `uuid` writes an id literal and `now` a time literal
/// in the backend's dialect.
#[must_use]
pub fn rows_before_lineages(
    tenant: &Tenant, ids: [KeyId; 4], uuid: fn(uuid::Uuid) -> String, now: &str,
) -> Vec<String> {
    let [a, b, c, d] = ids.map(|id| uuid(id.uuid()));
    let (app, tenant) = (&tenant.app_id, &tenant.tenant_id);
    let key = |id: &str, state: &str, n: u8| {
        format!(
            "INSERT INTO keysmith_keys (id, app_id, tenant_id, hash, name, hint, prefix, environment, state, \
             created_at, updated_at) VALUES ({id}, '{app}', '{tenant}', '{n:064x}', 'k', 'sk_live_…', 'sk', 'live', \
             '{state}', {now}, {now})"
        )
    };
    let rotation = |n: u8, old: &str, new: &str| {
        format!(
            "INSERT INTO keysmith_rotations (id, key_id, new_key_id, app_id, tenant_id, old_hash, new_hash, reason, \
             grace_ttl_us, grace_expires_at, created_at) VALUES ({}, {old}, {new}, '{app}', '{tenant}', 'x', 'y', \
             'scheduled', 0, {now}, {now})",
            uuid(uuid::Uuid::from_u128(u128::from(n)))
        )
    };
    vec![
        key(&a, "rotated", 1),
        key(&b, "rotated", 2),
        key(&c, "active", 3),
        key(&d, "active", 4),
        rotation(1, &a, &b),
        rotation(2, &b, &c),
    ]
}

/// After the lineage migration, keys rotated before it share the lineage of
/// the first key of their chain, and other keys are their own lineage.
///
/// # Panics
/// When the store does not behave so.
pub async fn keys_rotated_before_lineages_get_their_chains_lineage(
    store: Arc<dyn Store>, tenant: &Tenant, ids: [KeyId; 4],
) {
    let [a, b, c, d] = ids;
    for (id, lineage) in [(a, a), (b, a), (c, a), (d, d)] {
        let key = store.get_key(tenant, id).await.unwrap().expect("the key survives the migration");
        assert_eq!(key.key.lineage_id, lineage, "{id}");
    }
}

/// The version of the migration that turned a policy's single rate limit
/// into a list of named limits.
pub const NAMED_LIMITS_MIGRATION: i64 = 20_251_202_000_001;

/// Runs the migrations of `migrator` that came before named rate limits:
/// the database as it was before them.
pub fn migrations_before_named_limits(migrator: &sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let earlier = migrator.migrations.iter().filter(|m| m.version < NAMED_LIMITS_MIGRATION).cloned().collect();
    sqlx::migrate::Migrator { migrations: std::borrow::Cow::Owned(earlier), ..sqlx::migrate::Migrator::DEFAULT }
}

/// Two policies as the schema before named limits held them: `limited`
/// with one limit (10 per 60 s, burst 20) and `open` with none. `uuid`,
/// `list` (an empty list) and `now` are literals in the backend's dialect.
#[must_use]
pub fn policies_before_named_limits(
    tenant: &Tenant, ids: [PolicyId; 2], uuid: fn(uuid::Uuid) -> String, list: &str, now: &str,
) -> Vec<String> {
    let (app, tenant) = (&tenant.app_id, &tenant.tenant_id);
    let policy = |id: PolicyId, name: &str, limit: &str| {
        format!(
            "INSERT INTO keysmith_policies (id, app_id, tenant_id, name, rate_limit_requests, rate_limit_window_us, \
             rate_limit_burst, allowed_ips, allowed_origins, allowed_scopes, metadata, created_at, updated_at) \
             VALUES ({}, '{app}', '{tenant}', '{name}', {limit}, {list}, {list}, {list}, '{{}}', {now}, {now})",
            uuid(id.uuid())
        )
    };
    vec![policy(ids[0], "limited", "10, 60000000, 20"), policy(ids[1], "open", "NULL, NULL, NULL")]
}

/// After the named-limits migration, a policy's single limit is the limit
/// named `default`, a policy without one has none, both count per key, and
/// the new fields can be written and read back.
///
/// # Panics
/// When the store does not behave so.
pub async fn single_limits_become_the_default_named_limit(store: Arc<dyn Store>, tenant: &Tenant, ids: [PolicyId; 2]) {
    let limited = store.get_policy(tenant, ids[0]).await.unwrap().expect("the limited policy");
    assert_eq!(
        limited.rate_limits,
        [RateLimit::new(RateLimit::DEFAULT_NAME, 10, Duration::from_secs(60)).with_burst(20)]
    );
    assert_eq!(limited.limit_by, LimitBy::Key);
    let open = store.get_policy(tenant, ids[1]).await.unwrap().expect("the open policy");
    assert!(open.rate_limits.is_empty());
    let upgraded = Policy {
        rate_limits: vec![
            RateLimit::new("burst", 10, Duration::from_secs(1)),
            RateLimit::new("hourly", 1000, Duration::from_secs(3600)),
        ],
        limit_by: LimitBy::Owner,
        ..(*open).clone()
    };
    store.update_policy(&upgraded).await.unwrap();
    assert_eq!(store.get_policy(tenant, ids[1]).await.unwrap().as_deref(), Some(&upgraded));
}

/// The first migration version that adds owners and credits.
pub const OWNERS_MIGRATION: i64 = 20_261_202_010_001;

/// The migrations a database had before owners and credits.
#[must_use]
pub fn migrations_before_owners(all: &sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrations_before(all, OWNERS_MIGRATION)
}

/// The migrations of `all` older than `version`.
fn migrations_before(all: &sqlx::migrate::Migrator, version: i64) -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(all.migrations.iter().filter(|m| m.version < version).cloned().collect()),
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

/// An old-style key (no owner, no credits) and a policy, as a database made
/// before owners and credits held them; `uuid` writes an id literal and
/// `now` the current time in the backend's SQL.
#[must_use]
pub fn rows_before_owners(tenant: &Tenant, key: KeyId, uuid: fn(uuid::Uuid) -> String, now: &str) -> Vec<String> {
    let (app, tenant) = (&tenant.app_id, &tenant.tenant_id);
    let id = uuid(key.uuid());
    vec![format!(
        "INSERT INTO keysmith_keys (id, app_id, tenant_id, hash, name, hint, prefix, environment, state, \
         created_at, updated_at, metadata, lineage_id) VALUES ({id}, '{app}', '{tenant}', '{:064x}', 'old', \
         'sk_live_…', 'sk', 'live', 'active', {now}, {now}, '{{}}', {id})",
        7
    )]
}

/// After the owners and credits migrations, the old key reads back without
/// owner or credits, and takes credits; new keys take owners under a policy
/// that limits them.
pub async fn old_keys_take_owners_and_credits_after_the_migrations(store: Arc<dyn Store>, tenant: &Tenant, key: KeyId) {
    use keysmith_core::{CreditSpend, Credits, Engine, NewKey, PolicySpec};

    let old = store.get_key(tenant, key).await.unwrap().expect("the old key survives the migrations");
    assert_eq!((old.key.owner_id.as_deref(), old.key.credits), (None, None));
    let set = store.set_credits(tenant, key, Some(&Credits::new(2))).await.unwrap();
    assert_eq!(set.credits, Some(Credits::new(2)));
    assert_eq!(store.spend_credits(&old.key, 1, t0()).await.unwrap(), CreditSpend::Spent(Credits::new(1)));

    let engine = Engine::builder(Arc::clone(&store)).build().unwrap();
    let acme = engine.tenant(tenant.app_id.clone(), tenant.tenant_id.clone());
    let policy = acme.create_policy(PolicySpec::new("one").with_max_active_keys_per_owner(1)).await.unwrap();
    assert_eq!(policy.max_active_keys_per_owner, Some(1));
    let new = NewKey::new("new").with_owner("cus_1").with_policy(policy.id);
    let created = acme.create_key(new.clone()).await.unwrap();
    assert_eq!(created.key.owner_id.as_deref(), Some("cus_1"));
    assert!(matches!(acme.create_key(new).await, Err(Error::OwnerKeyLimit { .. })));
    // Closed before the test database is dropped: every connection, and
    // whatever it still holds, is released.
    engine.shutdown().await;
    store.close().await;
}

/// The MySQL migration version that makes every identity and name compare
/// exactly (NO PAD binary collations).
pub const EXACT_IDENTITIES_MIGRATION: i64 = 20_261_203_010_001;

/// The migrations a MySQL database had before identities compared exactly.
#[must_use]
pub fn migrations_before_exact_identities(all: &sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrations_before(all, EXACT_IDENTITIES_MIGRATION)
}

/// The migration version that adds the credits an owner's keys share.
pub const OWNER_CREDITS_MIGRATION: i64 = 20_261_202_030_001;

/// The migrations a database had before owner credits.
#[must_use]
pub fn migrations_before_owner_credits(all: &sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrations_before(all, OWNER_CREDITS_MIGRATION)
}

/// A key a database made before owner credits holds: owner `cus_1`, 3
/// credits of its own, under a policy that limits by owner (whose rate
/// limits and quota were the owner's, and credits still the key's).
#[derive(Debug)]
pub struct KeyBeforeOwnerCredits {
    /// The key's id.
    pub id: KeyId,
    /// Its policy's id.
    pub policy_id: PolicyId,
    /// Its secret, made by an engine of its own.
    pub raw: keysmith_core::RawKey,
}

impl KeyBeforeOwnerCredits {
    /// A fresh id, policy id and secret.
    ///
    /// # Panics
    /// If a memory engine cannot make a key.
    pub async fn new() -> Self {
        let engine = keysmith_core::Engine::builder(Arc::new(keysmith_core::MemoryStore::new())).build().unwrap();
        let made = engine.tenant("app", "acme").create_key(keysmith_core::NewKey::new("old")).await.unwrap();
        Self { id: KeyId::new(), policy_id: PolicyId::new(), raw: made.raw }
    }
}

/// The rows of `old` in `tenant`; `uuid` writes an id literal, `list` an
/// empty list and `now` the current time in the backend's SQL.
#[must_use]
pub fn rows_before_owner_credits(
    tenant: &Tenant, old: &KeyBeforeOwnerCredits, uuid: fn(uuid::Uuid) -> String, list: &str, now: &str,
) -> Vec<String> {
    use keysmith_core::Hasher as _;

    let (app, tenant) = (&tenant.app_id, &tenant.tenant_id);
    let (id, policy_id) = (uuid(old.id.uuid()), uuid(old.policy_id.uuid()));
    let hash = keysmith_core::Sha256Hasher.hash(old.raw.expose()).to_hex();
    vec![
        format!(
            "INSERT INTO keysmith_policies (id, app_id, tenant_id, name, rate_limits, limit_by, allowed_ips, \
             allowed_origins, allowed_scopes, metadata, created_at, updated_at) VALUES ({policy_id}, '{app}', \
             '{tenant}', 'legacy', '[]', 'owner', {list}, {list}, {list}, '{{}}', {now}, {now})"
        ),
        format!(
            "INSERT INTO keysmith_keys (id, app_id, tenant_id, hash, name, hint, prefix, environment, state, \
             created_at, updated_at, metadata, lineage_id, owner_id, policy_id) VALUES ({id}, '{app}', '{tenant}', \
             '{hash}', 'old', 'sk_live_…', 'sk', 'live', 'active', {now}, {now}, '{{}}', {id}, 'cus_1', {policy_id})"
        ),
        format!(
            "INSERT INTO keysmith_credits (lineage_id, app_id, tenant_id, remaining) VALUES ({id}, '{app}', '{tenant}', 3)"
        ),
    ]
}

/// After the owner-credits migration, the old key keeps its owner and its
/// own credits, its owner takes credits, and a key of that owner under a
/// policy that limits by owner spends them until they are exhausted. The
/// old key, under its policy that limits by owner, spends its own credits
/// (never passes for free, never takes its owner's).
///
/// # Panics
/// When the store or the engine does not behave so.
pub async fn owners_take_credits_after_the_migration(
    store: Arc<dyn Store>, tenant: &Tenant, old: &KeyBeforeOwnerCredits,
) {
    use keysmith_core::{
        CreditSpend, Credits, Engine, LimitBy, NewKey, PolicySpec, Refusal, RequestContext, ValidationError,
    };

    let key = old.id;
    let stored = store.get_key(tenant, key).await.unwrap().expect("the old key survives the migration");
    assert_eq!((stored.key.owner_id.as_deref(), stored.key.credits), (Some("cus_1"), Some(Credits::new(3))));
    assert_eq!(store.owner_credits(tenant, "cus_1").await.unwrap(), None);
    store.set_owner_credits(tenant, "cus_1", Some(&Credits::new(2))).await.unwrap();
    let spent = store.spend_owner_credits(tenant, "cus_1", 1, t0()).await.unwrap();
    assert_eq!(spent, CreditSpend::Spent(Credits::new(1)));

    let engine = Engine::builder(Arc::clone(&store)).build().unwrap();
    let acme = engine.tenant(tenant.app_id.clone(), tenant.tenant_id.clone());
    let policy = acme.create_policy(PolicySpec::new("shared").with_limit_by(LimitBy::Owner)).await.unwrap();
    let created = acme.create_key(NewKey::new("new").with_owner("cus_1").with_policy(policy.id)).await.unwrap();
    let ctx = RequestContext::new();
    let passed = engine.validate(created.raw.expose(), &ctx).await.unwrap();
    assert_eq!(passed.credits.map(|c| c.remaining), Some(0), "the owner's credits, not the old key's");
    match engine.validate(created.raw.expose(), &ctx).await {
        Err(ValidationError::Refused(Refusal::CreditsExhausted { .. })) => {}
        other => panic!("expected credits_exhausted, got {other:?}"),
    }
    assert_eq!(store.get_key(tenant, key).await.unwrap().unwrap().key.credits, Some(Credits::new(3)));

    // The old key spends its own credits though its owner's are exhausted,
    // and is refused once they are gone.
    let legacy = acme.get_policy(old.policy_id).await.unwrap();
    assert_eq!((legacy.limit_by, stored.key.policy_id), (LimitBy::Owner, Some(old.policy_id)));
    for left in [2, 1, 0] {
        let passed = engine.validate(old.raw.expose(), &ctx).await.unwrap();
        assert_eq!(passed.credits.map(|c| c.remaining), Some(left), "its own credits");
    }
    match engine.validate(old.raw.expose(), &ctx).await {
        Err(ValidationError::Refused(Refusal::CreditsExhausted { .. })) => {}
        other => panic!("expected credits_exhausted, got {other:?}"),
    }
    assert_eq!(store.owner_credits(tenant, "cus_1").await.unwrap().map(|c| c.remaining), Some(0));
    // Its policy may limit by key, but not again by owner while it holds
    // credits of its own.
    acme.update_policy(old.policy_id, PolicySpec::new("legacy")).await.unwrap();
    let refused = acme.update_policy(old.policy_id, PolicySpec::new("legacy").with_limit_by(LimitBy::Owner)).await;
    assert!(
        matches!(&refused, Err(Error::KeysHoldCredits { key_ids, count: 1, .. }) if key_ids == &[key]),
        "{refused:?}"
    );
    engine.shutdown().await;
    store.close().await;
}

/// The migration version that adds hourly roll-ups, outcomes and retention.
pub const USAGE_OUTCOMES_MIGRATION: i64 = 20_261_206_010_001;

/// The migrations a database had before hourly roll-ups and outcomes.
#[must_use]
pub fn migrations_before_usage_outcomes(all: &sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    migrations_before(all, USAGE_OUTCOMES_MIGRATION)
}

/// A day's roll-up of `key` as a database before outcomes held it: 7
/// requests, 2 errors, on the day that starts at `day` (a SQL literal).
#[must_use]
pub fn rollup_before_usage_outcomes(tenant: &Tenant, key: KeyId, uuid: fn(uuid::Uuid) -> String, day: &str) -> String {
    format!(
        "INSERT INTO keysmith_usage_agg (key_id, period, period_start, app_id, tenant_id, requests, errors) \
         VALUES ({}, 'day', {day}, '{}', '{}', 7, 2)",
        uuid(key.uuid()),
        tenant.app_id,
        tenant.tenant_id
    )
}

/// After the migration the old roll-up keeps its counts (no status classes,
/// no refusals), and new ones count hours and refusals beside it.
///
/// # Panics
/// On a mismatch.
pub async fn old_rollups_keep_their_counts_after_the_outcomes_migration(
    store: Arc<dyn Store>, tenant: &Tenant, key: KeyId, day: chrono::DateTime<chrono::Utc>,
) {
    use keysmith_core::usage::{RefusalReason, UsageBatch, UsageCounts, UsageDelta};
    let days = store.usage_aggregates(tenant, key, Period::Day, TimeRange::default()).await.unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!((days[0].period_start, days[0].requests, days[0].errors, days[0].refused.total()), (day, 7, 2, 0));
    let delta = UsageDelta {
        key_id: key,
        tenant: tenant.into(),
        hour: day,
        counts: UsageCounts::refused(RefusalReason::KeySuspended),
    };
    store.write_usage(&UsageBatch { id: UsageId::new(), records: &[], deltas: &[delta] }).await.unwrap();
    let days = store.usage_aggregates(tenant, key, Period::Day, TimeRange::default()).await.unwrap();
    assert_eq!((days[0].requests, days[0].refused.key_suspended), (7, 1));
    let hours = store.usage_aggregates(tenant, key, Period::Hour, TimeRange::default()).await.unwrap();
    assert_eq!((hours.len(), hours[0].refused.key_suspended), (1, 1));
}

/// The change log as a database administrator may leave it: a row that is
/// not a change and one too large to be one (both written by hand) come
/// back as unreadable, with their numbers, the large payload not fetched;
/// once the log is renumbered (`renumber`: the backend's statements that
/// empty it and restart its numbering), its highest number is below the
/// numbers read before, which is how an engine tells. `pool` is the
/// store's database, written to by hand.
///
/// # Panics
/// When the store does not behave so.
pub async fn a_change_log_reports_unreadable_rows_and_a_renumbering<DB: sqlx::Database>(
    store: Arc<dyn Store>, pool: &sqlx::Pool<DB>, renumber: &[&str],
) where
    for<'e> &'e sqlx::Pool<DB>: sqlx::Executor<'e, Database = DB>,
{
    use keysmith_core::Change;
    use keysmith_core::store::MAX_LOGGED_CHANGE_LEN;

    let sql = async |statement: String| {
        sqlx::Executor::execute(pool, statement.as_str()).await.unwrap();
    };
    let tenant = Tenant::new("app", "acme");
    let start = store.changes_after(None, 0).await.unwrap().expect("the store keeps a change log").latest.unwrap_or(0);
    let owner = |id: &str| Change::owner(&tenant, id);
    for id in ["cus_1", "cus_2", "cus_3"] {
        store.log_change(&owner(id), t0()).await.unwrap();
    }
    let logged = store.changes_after(Some(start), 100).await.unwrap().unwrap();
    let seqs: Vec<u64> = logged.changes.iter().map(|(seq, _)| *seq).collect();
    sql(format!("UPDATE keysmith_change_log SET payload = 'not a change' WHERE seq = {}", seqs[0])).await;
    // A change, were it fetched: padded past the bound.
    let padded = format!("{}{}", owner("cus_2").to_json().unwrap(), " ".repeat(MAX_LOGGED_CHANGE_LEN + 1));
    sql(format!("UPDATE keysmith_change_log SET payload = '{padded}' WHERE seq = {}", seqs[1])).await;
    let read = store.changes_after(Some(start), 100).await.unwrap().unwrap();
    assert_eq!(read.changes, [(seqs[0], None), (seqs[1], None), (seqs[2], Some(owner("cus_3")))]);
    assert_eq!(read.latest, Some(seqs[2]));

    for statement in renumber {
        sql((*statement).to_owned()).await;
    }
    let empty = store.changes_after(Some(seqs[2]), 100).await.unwrap().unwrap();
    assert_eq!(empty.latest, None, "an empty log tells no number");
    store.log_change(&owner("cus_4"), t0()).await.unwrap();
    let renumbered = store.changes_after(Some(seqs[2]), 100).await.unwrap().unwrap();
    assert!(renumbered.changes.is_empty(), "numbered below what was read: {renumbered:?}");
    assert!(renumbered.latest.is_some_and(|latest| latest < seqs[2]), "{renumbered:?}");
}
