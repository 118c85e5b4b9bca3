//! The change log: changes whose publish failed, for other engines to read.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use super::LoggedChanges;
use crate::Change;

/// The changes logged, oldest first, each with its sequence number.
#[derive(Debug, Default)]
pub(super) struct ChangeLog {
    /// `None` for a row that is not a change: none is ever appended but by
    /// a test, as a row written by hand into a SQL store.
    rows: VecDeque<(u64, DateTime<Utc>, Option<Change>)>,
    /// The last sequence number given; never reused, even once its row is
    /// deleted, as a SQL store's auto-increment.
    last: u64,
}

impl ChangeLog {
    pub(super) fn append(&mut self, change: &Change, at: DateTime<Utc>) {
        self.last += 1;
        self.rows.push_back((self.last, at, Some(change.clone())));
    }

    /// Appends a row that is not a change.
    #[cfg(test)]
    pub(super) fn append_unreadable(&mut self, at: DateTime<Utc>) {
        self.last += 1;
        self.rows.push_back((self.last, at, None));
    }

    pub(super) fn after(&self, after: Option<u64>, limit: u32) -> LoggedChanges {
        // Numbers only grow here: the last row holds the highest.
        let latest = self.rows.back().map(|(seq, ..)| *seq);
        let Some(after) = after else {
            return LoggedChanges { latest, changes: Vec::new() };
        };
        let changes = self
            .rows
            .iter()
            .filter(|(seq, ..)| *seq > after)
            .take(limit as usize)
            .map(|(seq, _, change)| (*seq, change.clone()))
            .collect();
        LoggedChanges { latest, changes }
    }

    /// Deletes every row and numbers the next one 1 again, as a SQL
    /// `TRUNCATE … RESTART IDENTITY` does: what a test of a renumbered log
    /// needs.
    #[cfg(test)]
    pub(super) fn renumber(&mut self) {
        self.rows.clear();
        self.last = 0;
    }

    pub(super) fn delete_before(&mut self, before: DateTime<Utc>, limit: u32) -> u64 {
        let mut deleted = 0;
        self.rows.retain(|(_, at, _)| {
            let expired = *at < before && deleted < u64::from(limit);
            deleted += u64::from(expired);
            !expired
        });
        deleted
    }
}
