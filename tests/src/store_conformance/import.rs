//! Importing keys an application issued itself, and validating them as they are.

use super::engine::{engine_on, refusal_of};
#[allow(clippy::wildcard_imports)]
use super::*;
use keysmith_core::{ImportOptions, ImportRow, LegacyKeys, ParsedKey};

/// The lowercase hex SHA-256 of `raw`, as a source table keeps it.
fn sha256_hex(raw: &str) -> String {
    Sha256Hasher.hash(raw).to_hex()
}

/// A source row for the legacy key `raw`.
fn row(line: u64, raw: &str, owner: &str) -> ImportRow {
    ImportRow {
        line,
        hash: sha256_hex(raw),
        hint: Some(raw[..9].to_owned()),
        name: Some(format!("key {line}")),
        owner_id: Some(owner.to_owned()),
        created_at: Some(at(-86_400)),
        external_id: Some(format!("row-{line}")),
        ..ImportRow::default()
    }
}

/// A policy of one active key per owner.
async fn one_per_owner(tenant: &keysmith_core::TenantEngine) -> Policy {
    let spec = PolicySpec::new("one-per-user").with_max_active_keys_per_owner(1);
    tenant.create_policy(spec).await.unwrap()
}

/// Imported keys validate as they are (under an application that accepts
/// their prefix), revoked ones arrive revoked, a prefix not accepted stays
/// malformed, and a rotation issues a checksummed key of the same prefix.
pub async fn imported_legacy_keys_validate_as_they_are_and_rotate_to_checksummed_keys(store: Arc<dyn Store>) {
    let clock = ManualClock::new(t0());
    let plain = engine_on(Arc::clone(&store), &clock);
    let legacy = LegacyKeys::new().accept_prefixes("billing", ["mk_"]);
    let engine = engine_builder(Arc::clone(&store)).with_clock(clock.clone()).with_legacy_keys(legacy).build().unwrap();
    let acme = engine.tenant("billing", "acme");
    let policy = one_per_owner(&acme).await;
    let (alice, bob, carol) = ("mk_alice0123456789abcdef", "mk_bob00123456789abcdef", "pk_carol123456789abcdef");
    let bob_old = "mk_bobold123456789abcdef";
    let rows = vec![
        row(2, alice, "user-alice"),
        ImportRow { revoked_at: Some(at(-3600)), ..row(3, bob_old, "user-bob") },
        row(4, bob, "user-bob"),
        row(5, carol, "user-carol"),
    ];
    let options = ImportOptions::new().with_policy(policy.id).with_scopes(["read"]);
    let report = acme.import_keys(&rows, &options).await.unwrap();
    assert_eq!((report.imported, report.imported_inactive, report.skipped), (4, 1, 0), "{report:?}");
    assert!(report.refused.is_empty(), "{report:?}");

    let ctx = RequestContext::new();
    let passed = engine.validate(alice, &ctx).await.unwrap();
    assert_eq!(passed.key.owner_id.as_deref(), Some("user-alice"));
    assert_eq!(passed.key.scopes, ["read"]);
    assert_eq!(passed.key.policy_id, Some(policy.id));
    assert_eq!(passed.key.metadata["external_id"], "row-2");
    assert!(engine.validate(bob, &ctx).await.is_ok());
    assert_eq!(refusal_of(engine.validate(bob_old, &ctx).await), Refusal::Revoked);
    assert_eq!(refusal_of(engine.validate(carol, &ctx).await), Refusal::Malformed, "pk_ is not accepted");
    assert_eq!(refusal_of(plain.validate(alice, &ctx).await), Refusal::Malformed, "no legacy keys by default");
    // Another application's engine rules do not carry over to this app's keys.
    let elsewhere = LegacyKeys::new().accept_any("shipping");
    let shipping =
        engine_builder(Arc::clone(&store)).with_clock(clock.clone()).with_legacy_keys(elsewhere).build().unwrap();
    assert_eq!(refusal_of(shipping.validate(alice, &ctx).await), Refusal::Malformed);

    // A rotation moves the client onto a checksummed key of the same look.
    let rotated = acme.rotate_key(passed.key.id, RotationReason::Scheduled, Some(Duration::ZERO)).await.unwrap();
    let parsed = ParsedKey::parse(rotated.raw.expose()).expect("a rotation issues a Keysmith key");
    assert_eq!(parsed.prefix, "mk");
    assert!(engine.validate(rotated.raw.expose(), &ctx).await.is_ok());
    assert!(plain.validate(rotated.raw.expose(), &ctx).await.is_ok(), "no legacy rule needed any more");
    assert_eq!(refusal_of(engine.validate(alice, &ctx).await), Refusal::Revoked, "the old secret stopped");
}

/// A second run is a no-op; a bad row is reported with its line and its
/// batch writes nothing; the owner limit refuses (and reports) a second
/// active key; a dry run reports the same and writes nothing.
pub async fn import_is_idempotent_all_or_nothing_and_keeps_the_owner_limit(store: Arc<dyn Store>) {
    let clock = ManualClock::new(t0());
    let engine = engine_on(Arc::clone(&store), &clock);
    let acme = engine.tenant("billing", "acme");
    let policy = one_per_owner(&acme).await;
    let options = ImportOptions::new().with_policy(policy.id);
    let rows = vec![row(2, "mk_first0123456789abcdef", "u1"), row(3, "mk_second123456789abcdef", "u2")];

    let dry = acme.import_keys(&rows, &options.clone().dry_run(true)).await.unwrap();
    assert_eq!((dry.imported, dry.skipped, dry.dry_run), (2, 0, true));
    assert!(acme.list_keys(&KeyFilter::default()).await.unwrap().is_empty(), "a dry run writes nothing");

    let first = acme.import_keys(&rows, &options).await.unwrap();
    assert_eq!((first.imported, first.skipped), (2, 0));
    let again = acme.import_keys(&rows, &options).await.unwrap();
    assert_eq!((again.imported, again.skipped), (0, 2), "a second run is a no-op");
    assert_eq!(acme.list_keys(&KeyFilter::default()).await.unwrap().len(), 2);

    // A bad hash: reported with its line, nothing of its batch written.
    let bad = vec![
        row(10, "mk_third0123456789abcdef", "u3"),
        ImportRow { hash: "not-a-hash".into(), ..row(11, "mk_fourth123456789abcdef", "u4") },
        ImportRow { hash: "zz".repeat(32), ..row(12, "mk_fifth0123456789abcdef", "u5") },
    ];
    let refused = acme.import_keys(&bad, &options).await.unwrap();
    assert_eq!(refused.imported, 0);
    assert_eq!(refused.refused.iter().map(|r| r.line).collect::<Vec<_>>(), [11, 12]);
    assert!(refused.refused[0].reason.contains("64 hex"), "{:?}", refused.refused[0]);
    assert_eq!(refused.not_written, 1);
    assert_eq!(acme.list_keys(&KeyFilter::default()).await.unwrap().len(), 2, "nothing of the batch written");

    // One active key per owner: u1 holds one; a revoked one still fits.
    let more = vec![
        row(20, "mk_u1second23456789abcdef", "u1"),
        ImportRow { revoked_at: Some(at(-60)), ..row(21, "mk_u1revoked3456789abcde", "u1") },
        row(22, "mk_u6first123456789abcdef", "u6"),
        row(23, "mk_u6second23456789abcdef", "u6"),
    ];
    let limited = acme.import_keys(&more, &options).await.unwrap();
    assert_eq!(limited.imported, 2, "{limited:?}");
    assert_eq!(limited.refused.iter().map(|r| r.line).collect::<Vec<_>>(), [20, 23]);
    assert!(limited.refused[0].reason.contains("max_active_keys_per_owner"));
    let u6 = KeyFilter { owner_id: Some("u6".into()), ..KeyFilter::default() };
    assert_eq!(acme.list_keys(&u6).await.unwrap().len(), 1);
}

/// A hash another tenant's key holds is refused, and the other tenant's key
/// is untouched.
pub async fn imported_hash_of_another_tenants_key_is_refused(store: Arc<dyn Store>) {
    let clock = ManualClock::new(t0());
    let engine = engine_on(Arc::clone(&store), &clock);
    let theirs = engine.tenant("billing", "globex").create_key(NewKey::new("theirs")).await.unwrap();
    let acme = engine.tenant("billing", "acme");
    let rows =
        vec![ImportRow { line: 2, hash: Sha256Hasher.hash(theirs.raw.expose()).to_hex(), ..ImportRow::default() }];
    let report = acme.import_keys(&rows, &ImportOptions::new()).await.unwrap();
    assert_eq!(report.imported, 0);
    assert_eq!(report.refused.len(), 1);
    assert!(acme.list_keys(&KeyFilter::default()).await.unwrap().is_empty());
    let still = engine.validate(theirs.raw.expose(), &RequestContext::new()).await.unwrap();
    assert_eq!(still.key.tenant, Tenant::new("billing", "globex"));
}

/// A row whose source id (`external_id`) one of the tenant's keys was
/// imported from is skipped, whatever its hash now (the source changed the
/// secret since), and so is a later row of one batch with an earlier row's
/// id; another tenant's imports do not count, and rows without an id are
/// told apart by their hash alone.
pub async fn import_skips_rows_whose_source_id_was_imported(store: Arc<dyn Store>) {
    let clock = ManualClock::new(t0());
    let engine = engine_on(Arc::clone(&store), &clock);
    let (acme, globex) = (engine.tenant("billing", "acme"), engine.tenant("billing", "globex"));
    let options = ImportOptions::new();
    let first = acme.import_keys(&[row(1, "mk_first0123456789abcdef", "u1")], &options).await.unwrap();
    assert_eq!(first.imported, 1);

    // The same source row, its secret changed since: skipped.
    let changed = ImportRow { external_id: Some("row-1".into()), ..row(5, "mk_changed23456789abcdef", "u1") };
    let again = acme.import_keys(std::slice::from_ref(&changed), &options).await.unwrap();
    assert_eq!((again.imported, again.skipped), (0, 1));
    // Two rows of one batch with one id: the first goes in.
    let twins = [
        ImportRow { external_id: Some("row-7".into()), ..row(7, "mk_twin10123456789abcdef", "u7") },
        ImportRow { external_id: Some("row-7".into()), ..row(8, "mk_twin20123456789abcdef", "u7") },
    ];
    let twice = acme.import_keys(&twins, &options).await.unwrap();
    assert_eq!((twice.imported, twice.skipped), (1, 1));
    // Rows without an id, of different hashes: both.
    let anonymous = [
        ImportRow { external_id: None, ..row(9, "mk_anon10123456789abcdef", "u9") },
        ImportRow { external_id: None, ..row(10, "mk_anon20123456789abcdef", "u9") },
    ];
    assert_eq!(acme.import_keys(&anonymous, &options).await.unwrap().imported, 2);
    // Another tenant's source ids are its own.
    assert_eq!(globex.import_keys(&[changed], &options).await.unwrap().imported, 1);
    // Ids are compared byte for byte: case and a trailing space make others.
    let lookalikes = [
        ImportRow { external_id: Some("ROW-1".into()), ..row(11, "mk_upper0123456789abcdef", "u11") },
        ImportRow { external_id: Some("row-1 ".into()), ..row(12, "mk_space0123456789abcdef", "u12") },
    ];
    assert_eq!(acme.import_keys(&lookalikes, &options).await.unwrap().imported, 2);

    let keys = acme.list_keys(&KeyFilter::default()).await.unwrap();
    assert_eq!(keys.len(), 6);
    let ids: HashSet<&str> = keys.iter().filter_map(keysmith_core::Key::external_id).collect();
    assert_eq!(ids, HashSet::from(["row-1", "row-7", "ROW-1", "row-1 "]));
}
