//! Bounded tables of the text usage records repeat (route templates, user
//! agents): the request path finds a text's number and queues that; the
//! writer turns numbers back into text once per batch.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use dashmap::DashMap;

use super::SharedStr;

/// A text of a queued usage entry: a number in its table, or the text
/// itself (a table that is full, the raw path, `unmatched`).
#[derive(Debug, Clone)]
pub(crate) enum Text {
    /// The text's number in its [`TextTable`].
    Id(u32),
    /// The text, shared (static for fixed texts).
    Shared(SharedStr),
}

/// Texts, each kept once and numbered in order of first use; at most
/// `max` of them, so a client cannot grow it without bound: past it a text
/// is queued as a copy, as it would be without a table.
#[derive(Debug)]
pub(crate) struct TextTable {
    ids: DashMap<SharedStr, u32, foldhash::fast::RandomState>,
    /// Text by number; written only when a text is added.
    texts: RwLock<Vec<SharedStr>>,
    max: usize,
    /// Set once `texts` holds `max`, read before taking the write lock.
    full: AtomicBool,
    /// Unique to this table in the process, for [`LAST_INTERNED`].
    serial: u64,
}

thread_local! {
    /// The last text this thread interned, with its table's serial and its
    /// number: a route repeats from one request to the next, and is then
    /// found by comparing it with this one, without the map's hash or
    /// lock.
    static LAST_INTERNED: RefCell<Option<(u64, SharedStr, u32)>> = const { RefCell::new(None) };
}

impl TextTable {
    pub(crate) fn new(max: usize) -> Self {
        static SERIALS: AtomicU64 = AtomicU64::new(0);
        Self {
            ids: DashMap::default(),
            texts: RwLock::new(Vec::new()),
            max: max.min(u32::MAX as usize),
            full: AtomicBool::new(false),
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The number of `text`, if the table holds it.
    pub(crate) fn find(&self, text: &str) -> Option<u32> {
        self.ids.get(text).map(|id| *id.value())
    }

    /// `text` as a [`Text`]: its number, added to the table on first use
    /// while there is room; else a copy.
    pub(crate) fn intern(&self, text: &str) -> Text {
        let last = LAST_INTERNED.with_borrow(|last| match last {
            Some((table, held, id)) if *table == self.serial && held.as_str() == text => Some(*id),
            _ => None,
        });
        if let Some(id) = last {
            return Text::Id(id);
        }
        // The map's own copy of the text is kept, so a miss allocates
        // nothing.
        let found = self.ids.get(text).map(|entry| (entry.key().clone(), *entry.value()));
        match found {
            Some((held, id)) => {
                LAST_INTERNED.set(Some((self.serial, held, id)));
                Text::Id(id)
            }
            None => self.add(SharedStr::copied(text)),
        }
    }

    /// `text` as a [`Text`] without adding it: its number if the table
    /// holds it, else a copy that [`settle`](Self::settle) may add later
    /// (once the request it came with has passed, so that refused requests
    /// cannot fill the table).
    pub(crate) fn lookup(&self, text: &str) -> Text {
        self.find(text).map_or_else(|| Text::Shared(SharedStr::copied(text)), Text::Id)
    }

    /// A text from [`lookup`](Self::lookup), added to the table if it was
    /// a copy and there is room.
    pub(crate) fn settle(&self, text: Text) -> Text {
        match text {
            Text::Shared(text) => self.add(text),
            id @ Text::Id(_) => id,
        }
    }

    fn add(&self, text: SharedStr) -> Text {
        if self.full.load(Ordering::Relaxed) {
            return Text::Shared(text);
        }
        let mut texts = self.texts.write().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have added it since `find`.
        if let Some(id) = self.find(&text) {
            return Text::Id(id);
        }
        if texts.len() >= self.max {
            self.full.store(true, Ordering::Relaxed);
            return Text::Shared(text);
        }
        let id = u32::try_from(texts.len()).expect("max is at most u32::MAX");
        texts.push(text.clone());
        self.ids.insert(text, id);
        Text::Id(id)
    }

    /// The table for reading many texts back (one lock for a batch).
    pub(crate) fn reader(&self) -> TextReader<'_> {
        TextReader(self.texts.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A read view of a [`TextTable`].
pub(crate) struct TextReader<'a>(RwLockReadGuard<'a, Vec<SharedStr>>);

impl TextReader<'_> {
    /// The text `text` stands for. Numbers come only from the same table,
    /// which never removes one; an unknown number would be a bug, and reads
    /// as empty rather than failing a batch.
    pub(crate) fn text(&self, text: Text) -> SharedStr {
        match text {
            Text::Id(id) => self.0.get(id as usize).cloned().unwrap_or_default(),
            Text::Shared(text) => text,
        }
    }
}

/// The tables of one engine's usage records.
#[derive(Debug)]
pub(crate) struct UsageTexts {
    /// Route templates: the application's routes, so few.
    pub(crate) routes: TextTable,
    /// `User-Agent` values of passed requests.
    pub(crate) user_agents: TextTable,
}

impl UsageTexts {
    /// The most route templates kept.
    pub(crate) const MAX_ROUTES: usize = 1024;
    /// The most user agents kept (each at most 512 bytes).
    pub(crate) const MAX_USER_AGENTS: usize = 4096;
}

impl Default for UsageTexts {
    fn default() -> Self {
        Self { routes: TextTable::new(Self::MAX_ROUTES), user_agents: TextTable::new(Self::MAX_USER_AGENTS) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(table: &TextTable, text: Text) -> String {
        table.reader().text(text).as_str().to_owned()
    }

    #[test]
    fn a_text_is_numbered_once_and_read_back() {
        let table = TextTable::new(8);
        let Text::Id(first) = table.intern("/users/{id}") else { panic!("room left") };
        let Text::Id(second) = table.intern("/users/{id}") else { panic!("room left") };
        assert_eq!(first, second);
        assert_eq!(text_of(&table, Text::Id(first)), "/users/{id}");
    }

    #[test]
    fn a_text_just_interned_in_one_table_is_numbered_by_the_other_table_in_the_other() {
        let (first, second) = (TextTable::new(8), TextTable::new(8));
        second.intern("/health");
        let Text::Id(in_first) = first.intern("/users/{id}") else { panic!("room left") };
        let Text::Id(in_second) = second.intern("/users/{id}") else { panic!("room left") };
        assert_eq!((in_first, in_second), (0, 1));
        assert_eq!(text_of(&second, Text::Id(in_second)), "/users/{id}");
        let Text::Id(again) = first.intern("/users/{id}") else { panic!("room left") };
        assert_eq!(again, in_first);
    }

    #[test]
    fn a_looked_up_text_is_added_only_when_settled() {
        let table = TextTable::new(8);
        let looked_up = table.lookup("curl/8");
        assert!(matches!(looked_up, Text::Shared(_)));
        assert_eq!(table.find("curl/8"), None, "a refused request adds nothing");
        let settled = table.settle(looked_up);
        assert!(matches!(settled, Text::Id(_)));
        assert!(matches!(table.lookup("curl/8"), Text::Id(_)));
        assert_eq!(text_of(&table, settled), "curl/8");
    }

    #[test]
    fn a_full_table_copies_instead_of_growing() {
        let table = TextTable::new(2);
        for n in 0..10 {
            let text = table.intern(&format!("/r{n}"));
            assert_eq!(matches!(text, Text::Id(_)), n < 2);
            assert_eq!(text_of(&table, text), format!("/r{n}"));
        }
        assert_eq!(table.texts.read().unwrap().len(), 2);
        assert_eq!(table.ids.len(), 2);
    }
}
