//! Bounded tables of what usage records repeat (route templates, user
//! agents, the keys' tenants): the request path finds a value's number and
//! queues that; the writer turns numbers back into values once per batch.

use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use dashmap::DashMap;

use super::{SharedStr, SharedTenant};
use crate::{Key, KeyId};

/// A text of a request's usage draft: a number in its table, or the text
/// itself (a table that is full, the raw path, a user agent not yet known).
#[derive(Debug, Clone)]
pub(crate) enum Text {
    /// The text's number in its [`Table`].
    Id(u32),
    /// The text, shared.
    Shared(SharedStr),
}

/// Values, each kept once and numbered in order of first use; at most
/// `max` of them, so a client cannot grow it without bound: past it a value
/// is queued as a copy, as it would be without a table.
#[derive(Debug)]
pub(crate) struct Table<T: Hash + Eq> {
    ids: DashMap<T, u32, foldhash::fast::RandomState>,
    /// Value by number; written only when a value is added.
    values: RwLock<Vec<T>>,
    max: usize,
    /// Set once `values` holds `max`, read before taking the write lock.
    full: AtomicBool,
    /// Unique to this table in the process, for the thread's [`LAST`].
    serial: u64,
}

/// The most numbers a table gives: those above are the queued entry's
/// marks (see [`UsageEntry`](super::UsageEntry)).
const MAX_NUMBERS: usize = (u32::MAX - 2) as usize;

/// Each thread's last text found in each kind of table, with the table's
/// serial: a route and a user agent repeat from one request to the next,
/// and are then found by one comparison, without the map's hash or its
/// lock (whose counter every core would write).
struct Last {
    /// By [`Kind`].
    texts: [Option<(u64, SharedStr, u32)>; 2],
}

/// Which of the thread's last texts a table of texts keeps.
#[derive(Clone, Copy)]
enum Kind {
    Route = 0,
    UserAgent = 1,
}

thread_local! {
    static LAST: RefCell<Last> = const { RefCell::new(Last { texts: [None, None] }) };
    /// The last key whose tenant this thread numbered, by the key (whose
    /// tenant never changes); apart from [`LAST`], as a value with nothing
    /// to drop is read without a borrow or a destructor's registration.
    static LAST_TENANT: Cell<Option<(u64, KeyId, u32)>> = const { Cell::new(None) };
}

impl<T: Hash + Eq + Clone> Table<T> {
    pub(crate) fn new(max: usize) -> Self {
        static SERIALS: AtomicU64 = AtomicU64::new(0);
        Self {
            ids: DashMap::default(),
            values: RwLock::new(Vec::new()),
            max: max.min(MAX_NUMBERS),
            full: AtomicBool::new(false),
            serial: SERIALS.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The number of `value`, if the table holds it.
    pub(crate) fn find<Q: Hash + Eq + ?Sized>(&self, value: &Q) -> Option<u32>
    where
        T: Borrow<Q>,
    {
        self.ids.get(value).map(|id| *id.value())
    }

    /// `value`'s number, with the table's own copy of it; `None` if absent.
    fn find_held<Q: Hash + Eq + ?Sized>(&self, value: &Q) -> Option<(T, u32)>
    where
        T: Borrow<Q>,
    {
        self.ids.get(value).map(|entry| (entry.key().clone(), *entry.value()))
    }

    /// True once the table holds `max` values: nothing more is added.
    fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Adds `value` while there is room: its number, `None` when full.
    pub(crate) fn add(&self, value: T) -> Option<u32> {
        if self.is_full() {
            return None;
        }
        let mut values = self.values.write().unwrap_or_else(PoisonError::into_inner);
        // Another thread may have added it since `find`.
        if let Some(id) = self.find(&value) {
            return Some(id);
        }
        if values.len() >= self.max {
            self.full.store(true, Ordering::Relaxed);
            return None;
        }
        let id = u32::try_from(values.len()).expect("max is below u32::MAX");
        values.push(value.clone());
        self.ids.insert(value, id);
        Some(id)
    }

    /// The table for reading many values back (one lock for a batch).
    pub(crate) fn reader(&self) -> Reader<'_, T> {
        Reader(self.values.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Table<SharedStr> {
    /// The number of `text` if the table holds it: this thread's last
    /// text of its `kind` if it is that one, else from the map.
    #[inline]
    fn number(&self, text: &str, kind: Kind) -> Option<u32> {
        let last = LAST.with_borrow(|last| match &last.texts[kind as usize] {
            Some((table, held, id)) if *table == self.serial && held.as_str() == text => Some(*id),
            _ => None,
        });
        if last.is_some() {
            return last;
        }
        // The map's own copy of the text is kept, so a miss allocates
        // nothing.
        let (held, id) = self.find_held(text)?;
        LAST.with_borrow_mut(|last| last.texts[kind as usize] = Some((self.serial, held, id)));
        Some(id)
    }
}

/// A read view of a [`Table`].
pub(crate) struct Reader<'a, T>(RwLockReadGuard<'a, Vec<T>>);

impl<T> Reader<'_, T> {
    /// The value numbered `id`. Numbers come only from the same table,
    /// which never removes one: `None` would be a bug.
    pub(crate) fn get(&self, id: u32) -> Option<&T> {
        self.0.get(id as usize)
    }
}

/// The tables of one engine's usage records.
#[derive(Debug)]
pub(crate) struct UsageTexts {
    /// Route templates: the application's routes, so few. Number 0 is
    /// [`UNMATCHED_ROUTE`](crate::http::UNMATCHED_ROUTE).
    pub(crate) routes: Table<SharedStr>,
    /// `User-Agent` values of passed requests.
    pub(crate) user_agents: Table<SharedStr>,
    /// The tenants of the keys of passed requests.
    pub(crate) tenants: Table<SharedTenant>,
}

impl UsageTexts {
    /// The most route templates kept.
    pub(crate) const MAX_ROUTES: usize = 1024;
    /// The most user agents kept (each at most 512 bytes).
    pub(crate) const MAX_USER_AGENTS: usize = 4096;
    /// The most tenants kept.
    pub(crate) const MAX_TENANTS: usize = 65_536;
    /// The number of [`UNMATCHED_ROUTE`](crate::http::UNMATCHED_ROUTE).
    pub(crate) const UNMATCHED: u32 = 0;

    /// The number of route template `route`, `None` when the table is full
    /// (the caller's copy of it is then the only one made).
    #[inline]
    pub(crate) fn route(&self, route: &str) -> Option<u32> {
        let routes = &self.routes;
        routes.number(route, Kind::Route).or_else(|| {
            if routes.is_full() {
                return None;
            }
            routes.add(SharedStr::copied(route))
        })
    }

    /// `agent` as a [`Text`] without adding it: its number if the table
    /// holds it, else a copy that [`settle_user_agent`](Self::settle_user_agent)
    /// may add (once the request has passed, so that refused requests
    /// cannot fill the table).
    pub(crate) fn look_up_user_agent(&self, agent: &str) -> Text {
        let number = self.user_agents.number(agent, Kind::UserAgent);
        number.map_or_else(|| Text::Shared(SharedStr::copied(agent)), Text::Id)
    }

    /// A user agent from [`look_up_user_agent`](Self::look_up_user_agent):
    /// its number, added to the table if there is room; else the copy.
    pub(crate) fn settle_user_agent(&self, agent: &Text) -> Result<u32, SharedStr> {
        match agent {
            Text::Id(id) => Ok(*id),
            Text::Shared(text) => self.user_agents.add(text.clone()).ok_or_else(|| text.clone()),
        }
    }

    /// The number of `key`'s tenant, added on the key's first use while
    /// there is room; `None` when the table is full.
    pub(crate) fn tenant(&self, key: &Key) -> Option<u32> {
        let table = &self.tenants;
        if let Some((serial, key_id, id)) = LAST_TENANT.get()
            && serial == table.serial
            && key_id == key.id
        {
            return Some(id);
        }
        let id = match table.find(&key.tenant) {
            Some(id) => id,
            None if table.is_full() => return None,
            None => table.add(SharedTenant::from(&key.tenant))?,
        };
        LAST_TENANT.set(Some((table.serial, key.id, id)));
        Some(id)
    }

    /// The tables, read-locked for a batch.
    pub(crate) fn read(&self) -> TextsRead<'_> {
        TextsRead {
            routes: self.routes.reader(),
            user_agents: self.user_agents.reader(),
            tenants: self.tenants.reader(),
        }
    }
}

impl Default for UsageTexts {
    fn default() -> Self {
        let routes = Table::new(Self::MAX_ROUTES);
        let unmatched = routes.add(SharedStr::from(crate::http::UNMATCHED_ROUTE));
        debug_assert_eq!(unmatched, Some(Self::UNMATCHED));
        Self { routes, user_agents: Table::new(Self::MAX_USER_AGENTS), tenants: Table::new(Self::MAX_TENANTS) }
    }
}

/// Every table, read-locked for a batch.
pub(crate) struct TextsRead<'a> {
    pub(crate) routes: Reader<'a, SharedStr>,
    pub(crate) user_agents: Reader<'a, SharedStr>,
    pub(crate) tenants: Reader<'a, SharedTenant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(table: &Table<SharedStr>, id: u32) -> String {
        table.reader().get(id).expect("numbered by this table").as_str().to_owned()
    }

    #[test]
    fn a_route_is_numbered_once_and_read_back() {
        let texts = UsageTexts::default();
        let first = texts.route("/users/{id}").expect("room left");
        assert_eq!(texts.route("/users/{id}"), Some(first));
        assert_ne!(first, UsageTexts::UNMATCHED);
        assert_eq!(text_of(&texts.routes, first), "/users/{id}");
        assert_eq!(text_of(&texts.routes, UsageTexts::UNMATCHED), crate::http::UNMATCHED_ROUTE);
    }

    #[test]
    fn a_route_just_numbered_by_one_engine_is_numbered_by_the_other_in_the_other() {
        let (first, second) = (UsageTexts::default(), UsageTexts::default());
        second.route("/health");
        let in_first = first.route("/users/{id}").expect("room left");
        let in_second = second.route("/users/{id}").expect("room left");
        assert_eq!((in_first, in_second), (1, 2));
        assert_eq!(text_of(&second.routes, in_second), "/users/{id}");
        assert_eq!(first.route("/users/{id}"), Some(in_first));
    }

    #[test]
    fn a_full_routes_table_still_numbers_the_routes_it_holds() {
        let texts = UsageTexts::default();
        // `unmatched` holds number 0.
        let room = UsageTexts::MAX_ROUTES - 1;
        for n in 0..room + 3 {
            assert_eq!(texts.route(&format!("/r{n}")).is_some(), n < room, "route {n}");
        }
        assert_eq!(texts.route("/r0"), Some(1));
        assert!(texts.routes.is_full());
    }

    #[test]
    fn a_looked_up_user_agent_is_added_only_when_settled() {
        let texts = UsageTexts::default();
        let looked_up = texts.look_up_user_agent("curl/8");
        assert!(matches!(looked_up, Text::Shared(_)));
        assert_eq!(texts.user_agents.find("curl/8"), None, "a refused request adds nothing");
        let settled = texts.settle_user_agent(&looked_up).expect("room left");
        assert!(matches!(texts.look_up_user_agent("curl/8"), Text::Id(id) if id == settled));
        assert_eq!(text_of(&texts.user_agents, settled), "curl/8");
    }

    #[test]
    fn a_full_table_copies_instead_of_growing() {
        let table = Table::new(2);
        for n in 0..10 {
            let text = SharedStr::from(format!("/r{n}"));
            let id = table.find(text.as_str()).or_else(|| table.add(text));
            assert_eq!(id.is_some(), n < 2);
        }
        assert_eq!(table.values.read().unwrap().len(), 2);
        assert_eq!(table.ids.len(), 2);
    }

    #[test]
    fn keys_of_one_tenant_share_its_number_and_another_tenant_has_its_own() {
        use crate::Tenant;
        let texts = UsageTexts::default();
        let key = |tenant: &str| super::super::quota::tests::key(&Tenant::new("app", tenant), chrono::Utc::now());
        let (a, b, other) = (key("acme"), key("acme"), key("globex"));
        let (a, b, other) = (texts.tenant(&a), texts.tenant(&b), texts.tenant(&other));
        assert_eq!(a, b);
        assert_ne!(a, other);
        let read = texts.read();
        assert_eq!(read.tenants.get(a.unwrap()).map(SharedTenant::tenant), Some(&Tenant::new("app", "acme")));
        assert_eq!(read.tenants.get(other.unwrap()).map(SharedTenant::tenant), Some(&Tenant::new("app", "globex")));
    }
}
