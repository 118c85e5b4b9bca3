//! The change log: changes whose publish on the feed failed, read back by
//! every engine after the last sequence number it saw.

#[allow(clippy::wildcard_imports)]
use super::*;

use keysmith_core::store::LoggedChanges;

/// The changes a case logs: one of each kind, of two tenants.
fn changes_of(key: &StoredKey, other: &StoredKey) -> Vec<Change> {
    vec![
        Change::key(&key.key, Some(key.hash)),
        Change::Rotated {
            tenant: key.key.tenant.clone(),
            key_id: key.key.id,
            old_hash: key.hash,
            new_key_id: other.key.id,
            new_hash: other.hash,
        },
        Change::lineage(&other.key),
        Change::policy(&globex(), PolicyId::new()),
        Change::owner(&acme(), "cus_42 ünïcode"),
        Change::key(&other.key, None),
    ]
}

/// The first read gives only where the log stands; later reads give what
/// was logged after a number, oldest first, a page at a time, exactly as
/// logged: ids and hashes, nothing of the entities (names, metadata,
/// hints) and no secret.
pub async fn logged_changes_are_read_back_in_order_after_a_sequence_number(store: Arc<dyn Store>) {
    let start = store.changes_after(None, 100).await.unwrap().expect("the store keeps a change log");
    assert!(start.changes.is_empty(), "a first read replays nothing: {start:?}");
    let (key, other) = (sample_key(&acme()), sample_key(&globex()));
    let changes = changes_of(&key, &other);
    for (n, change) in changes.iter().enumerate() {
        assert!(store.log_change(change, at(i64::try_from(n).unwrap())).await.unwrap());
    }

    let all = store.changes_after(start.latest.or(Some(0)), 100).await.unwrap().unwrap();
    let read: Vec<Option<&Change>> = all.changes.iter().map(|(_, change)| change.as_ref()).collect();
    assert_eq!(read, changes.iter().map(Some).collect::<Vec<_>>(), "every change, in order, as logged");
    let seqs: Vec<u64> = all.changes.iter().map(|(seq, _)| *seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]) && seqs[0] > start.latest.unwrap_or(0), "{seqs:?}");
    assert_eq!(all.latest, seqs.last().copied(), "the log's highest number");
    let text = format!("{all:?}");
    for entity in ["deploy bot", "payments", "sk_live_", &format!("sk_live_{}", key.key.id)] {
        assert!(!text.contains(entity), "the log holds {entity:?}: {text}");
    }

    // A page at a time, each read after the last number of the one before.
    let first = store.changes_after(start.latest.or(Some(0)), 4).await.unwrap().unwrap();
    assert_eq!(first.changes.len(), 4);
    assert_eq!(first.latest, all.latest, "the log's highest number, not the page's");
    let rest = store.changes_after(Some(seqs[3]), 4).await.unwrap().unwrap();
    assert_eq!(rest.changes, all.changes[4..]);
    // Nothing new.
    let none = store.changes_after(all.latest, 100).await.unwrap().unwrap();
    assert_eq!(none, LoggedChanges { latest: all.latest, changes: Vec::new() });
    // A later first read starts at the end.
    assert_eq!(store.changes_after(None, 100).await.unwrap().unwrap().latest, all.latest);
}

/// Changes logged before a time are deleted, at most `limit` a statement;
/// later ones stay, and a number once given is never given again.
pub async fn logged_changes_are_deleted_by_age_in_bounded_batches(store: Arc<dyn Store>) {
    let start = store.changes_after(None, 0).await.unwrap().expect("the store keeps a change log").latest.unwrap_or(0);
    let key = sample_key(&acme());
    for secs in 0..5 {
        store.log_change(&Change::key(&key.key, Some(key.hash)), at(secs * 60)).await.unwrap();
    }
    let logged = store.changes_after(Some(start), 100).await.unwrap().unwrap();
    assert_eq!(logged.changes.len(), 5);

    // The three logged before minute 3, two at most a statement.
    assert_eq!(store.delete_changes_before(at(180), 2).await.unwrap(), 2);
    assert_eq!(store.delete_changes_before(at(180), 2).await.unwrap(), 1);
    assert_eq!(store.delete_changes_before(at(180), 2).await.unwrap(), 0);
    let kept = store.changes_after(Some(start), 100).await.unwrap().unwrap();
    assert_eq!(kept.changes, logged.changes[3..], "the two later ones, unchanged");

    // Everything deleted: the next change still gets a new number.
    assert_eq!(store.delete_changes_before(at(3600), 100).await.unwrap(), 2);
    let empty = store.changes_after(Some(start), 100).await.unwrap().unwrap();
    assert_eq!(empty, LoggedChanges { latest: None, changes: Vec::new() }, "an empty log tells no number");
    store.log_change(&Change::owner(&acme(), "cus_1"), at(3600)).await.unwrap();
    let last = logged.latest.unwrap();
    let next = store.changes_after(Some(last), 100).await.unwrap().unwrap();
    assert_eq!(next.changes.len(), 1, "numbered after every deleted change: {next:?}");
    assert!(next.changes[0].0 > last && next.latest == Some(next.changes[0].0));
}
