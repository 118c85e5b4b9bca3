//! The change log: changes whose publish failed, for other engines to read.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};

use super::LoggedChanges;
use crate::Change;

/// The changes logged, oldest first, each with its sequence number.
#[derive(Debug, Default)]
pub(super) struct ChangeLog {
    rows: VecDeque<(u64, DateTime<Utc>, Change)>,
    /// The last sequence number given; never reused, even once its row is
    /// deleted, as a SQL store's auto-increment.
    last: u64,
}

impl ChangeLog {
    pub(super) fn append(&mut self, change: &Change, at: DateTime<Utc>) {
        self.last += 1;
        self.rows.push_back((self.last, at, change.clone()));
    }

    pub(super) fn after(&self, after: Option<u64>, limit: u32) -> LoggedChanges {
        let Some(after) = after else {
            return LoggedChanges { latest: self.last, changes: Vec::new() };
        };
        let changes: Vec<(u64, Change)> = self
            .rows
            .iter()
            .filter(|(seq, ..)| *seq > after)
            .take(limit as usize)
            .map(|(seq, _, change)| (*seq, change.clone()))
            .collect();
        let latest = changes.last().map_or(after, |(seq, _)| *seq).max(after);
        LoggedChanges { latest, changes }
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
