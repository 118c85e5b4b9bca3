//! Reading request headers without knowing the framework's header type,
//! and writing the rate-limit headers of a response.

use std::any::Any;
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Datelike, Utc};
use dashmap::DashMap;
use sfv::{Integer, KeyRef, ListSerializer, StringRef, key_ref};

use super::HeaderSink;
use crate::limit::RateLimitStatus;
use crate::{
    CreditsStatus, Period, Policy, PolicyId, PolicySpec, Quota, RateLimit, Refusal, Validation, retry_after_secs,
};

/// Read access to a request's headers. Each adapter implements it for its
/// framework's header map (through a newtype), so the rules in this module
/// are written once.
///
/// Names are passed in lowercase; implementations match them
/// ASCII-case-insensitively, as HTTP header names are.
pub trait HeaderLookup {
    /// Every value of the header `name`, in the order they were received.
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>;

    /// The first value of `name`, if any.
    fn first_header<'a>(&'a self, name: &str) -> Option<&'a [u8]> {
        self.header_values(name).next()
    }

    /// Every value of the per-request header `name`, in the order they
    /// were received. By default looked up by its text; an adapter that
    /// keeps its framework's names in [`names::PER_REQUEST`]'s order
    /// overrides it (and [`first_known`](Self::first_known)) to take the
    /// name by its place, without matching the text per request.
    fn known_values(&self, name: names::Known) -> impl Iterator<Item = &[u8]> {
        self.header_values(name.name())
    }

    /// The first value of the per-request header `name`, if any.
    fn first_known(&self, name: names::Known) -> Option<&[u8]> {
        self.known_values(name).next()
    }
}

/// Headers as a list of `(name, value)` pairs: for tests and for adapters
/// whose framework hands headers out as pairs.
impl<N: AsRef<str>, V: AsRef<[u8]>> HeaderLookup for [(N, V)] {
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.iter().filter(move |(n, _)| n.as_ref().eq_ignore_ascii_case(name)).map(|(_, v)| v.as_ref())
    }
}

impl<T: HeaderLookup + ?Sized> HeaderLookup for &T {
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        (**self).header_values(name)
    }

    fn first_header<'a>(&'a self, name: &str) -> Option<&'a [u8]> {
        (**self).first_header(name)
    }

    fn known_values(&self, name: names::Known) -> impl Iterator<Item = &[u8]> {
        (**self).known_values(name)
    }

    fn first_known(&self, name: names::Known) -> Option<&[u8]> {
        (**self).first_known(name)
    }
}

/// Header names used by the HTTP layer, lowercase (as `http::HeaderName`
/// wants them).
pub mod names {
    /// `Authorization`.
    pub const AUTHORIZATION: &str = "authorization";
    /// `X-API-Key`.
    pub const X_API_KEY: &str = "x-api-key";
    /// `X-Forwarded-For`.
    pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
    /// `Forwarded` (RFC 7239).
    pub const FORWARDED: &str = "forwarded";
    /// `Origin`.
    pub const ORIGIN: &str = "origin";
    /// `User-Agent`.
    pub const USER_AGENT: &str = "user-agent";
    /// `Access-Control-Request-Method`, which marks a CORS preflight.
    pub const ACCESS_CONTROL_REQUEST_METHOD: &str = "access-control-request-method";
    /// `WWW-Authenticate`.
    pub const WWW_AUTHENTICATE: &str = "www-authenticate";
    /// `Retry-After`.
    pub const RETRY_AFTER: &str = "retry-after";
    /// `Content-Type`.
    pub const CONTENT_TYPE: &str = "content-type";
    /// `RateLimit-Limit`.
    pub const RATELIMIT_LIMIT: &str = "ratelimit-limit";
    /// `RateLimit-Remaining`.
    pub const RATELIMIT_REMAINING: &str = "ratelimit-remaining";
    /// `RateLimit-Reset`.
    pub const RATELIMIT_RESET: &str = "ratelimit-reset";
    /// `RateLimit` (the draft's current-state field).
    pub const RATELIMIT: &str = "ratelimit";
    /// `RateLimit-Policy` (the draft's policy field).
    pub const RATELIMIT_POLICY: &str = "ratelimit-policy";

    /// The names read or written on every request (the default key
    /// sources, client address, origin, user agent, preflight marker and
    /// the `RateLimit-*` headers of a passed request). An adapter builds its
    /// framework's header names from this list once
    /// ([`FrameworkNames`]) and finds them by their place, instead of
    /// parsing a name per request.
    pub const PER_REQUEST: [&str; 12] = [
        AUTHORIZATION,
        X_API_KEY,
        USER_AGENT,
        ORIGIN,
        X_FORWARDED_FOR,
        FORWARDED,
        ACCESS_CONTROL_REQUEST_METHOD,
        RATELIMIT_LIMIT,
        RATELIMIT_REMAINING,
        RATELIMIT_RESET,
        RATELIMIT,
        RATELIMIT_POLICY,
    ];

    /// One of the [`PER_REQUEST`] names, by its place there: what core
    /// asks an adapter's [`HeaderLookup`](super::HeaderLookup) for, so
    /// that the adapter finds its framework's name by that place rather
    /// than by matching the text on every request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Known(u8);

    impl Known {
        /// `Authorization`.
        pub const AUTHORIZATION: Self = Self(0);
        /// `X-API-Key`.
        pub const X_API_KEY: Self = Self(1);
        /// `User-Agent`.
        pub const USER_AGENT: Self = Self(2);
        /// `Origin`.
        pub const ORIGIN: Self = Self(3);
        /// `X-Forwarded-For`.
        pub const X_FORWARDED_FOR: Self = Self(4);
        /// `Forwarded`.
        pub const FORWARDED: Self = Self(5);
        /// `Access-Control-Request-Method`.
        pub const ACCESS_CONTROL_REQUEST_METHOD: Self = Self(6);

        /// `name` (lowercase), if it is one of [`PER_REQUEST`].
        #[must_use]
        pub fn of(name: &str) -> Option<Self> {
            per_request_index(name).and_then(|index| u8::try_from(index).ok()).map(Self)
        }

        /// Its place in [`PER_REQUEST`].
        #[must_use]
        pub fn index(self) -> usize {
            usize::from(self.0)
        }

        /// Its lowercase text.
        #[must_use]
        pub fn name(self) -> &'static str {
            PER_REQUEST[self.index()]
        }
    }

    /// A framework's own names of the [`PER_REQUEST`] headers, made once
    /// on first use: what an adapter finds a header by, by its [`Known`]
    /// place or by its text, instead of parsing a name per request. Both
    /// adapters keep one in a `static`.
    ///
    /// ```
    /// use keysmith_core::http::names::{self, FrameworkNames, Known};
    ///
    /// static KNOWN: FrameworkNames<String> = FrameworkNames::new(str::to_owned);
    ///
    /// assert_eq!(KNOWN.get(Known::X_API_KEY), names::X_API_KEY);
    /// assert_eq!(KNOWN.of(names::RATELIMIT).map(String::as_str), Some(names::RATELIMIT));
    /// assert_eq!(KNOWN.of("x-token"), None);
    /// ```
    #[derive(Debug)]
    pub struct FrameworkNames<N: 'static> {
        names: std::sync::OnceLock<[N; PER_REQUEST.len()]>,
        make: fn(&'static str) -> N,
    }

    impl<N> FrameworkNames<N> {
        /// Names made by `make` (`HeaderName::from_static`) from the
        /// lowercase texts.
        #[must_use]
        pub const fn new(make: fn(&'static str) -> N) -> Self {
            Self { names: std::sync::OnceLock::new(), make }
        }

        /// The framework's name of a header core reads on every request.
        pub fn get(&self, name: Known) -> &N {
            &self.all()[name.index()]
        }

        /// The framework's name of `name` (lowercase), if it is one of
        /// [`PER_REQUEST`].
        pub fn of(&self, name: &str) -> Option<&N> {
            per_request_index(name).map(|index| &self.all()[index])
        }

        fn all(&self) -> &[N; PER_REQUEST.len()] {
            self.names.get_or_init(|| PER_REQUEST.map(self.make))
        }
    }

    /// Where `name` (lowercase) is in [`PER_REQUEST`], if it is there.
    #[must_use]
    pub fn per_request_index(name: &str) -> Option<usize> {
        Some(match name {
            AUTHORIZATION => 0,
            X_API_KEY => 1,
            USER_AGENT => 2,
            ORIGIN => 3,
            X_FORWARDED_FOR => 4,
            FORWARDED => 5,
            ACCESS_CONTROL_REQUEST_METHOD => 6,
            RATELIMIT_LIMIT => 7,
            RATELIMIT_REMAINING => 8,
            RATELIMIT_RESET => 9,
            RATELIMIT => 10,
            RATELIMIT_POLICY => 11,
            _ => return None,
        })
    }
}

/// Which rate-limit headers responses carry. A [`Gate`](super::Gate)
/// option; the default is [`Draft`](Self::Draft).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RateLimitHeaders {
    /// The two Structured Fields of draft-ietf-httpapi-ratelimit-headers
    /// (-07 and later): `RateLimit-Policy` lists every limit, quota and
    /// credits of the key (`"burst";q=10;w=1, "quota-daily";q=1000;w=86400`),
    /// `RateLimit` the one closest to refusing (`"burst";r=7;t=1`): of the
    /// rate limits, the daily and monthly quota (`quota-daily`,
    /// `quota-monthly`) and the credits, the one with the fewest requests
    /// left, and of those the one that takes longest to reset.
    #[default]
    Draft,
    /// The older `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset` trio, for the one closest to refusing (chosen as
    /// for [`Draft`](Self::Draft)).
    Legacy,
    /// No rate-limit headers.
    None,
}

/// Seconds in a UTC day, the window of a daily quota.
const DAY_SECS: u64 = 24 * 60 * 60;

impl RateLimitHeaders {
    /// Writes the headers of a passed request into `out`: its policy's
    /// limits and quota and its credits, and the state of the one closest to
    /// refusing. Nothing when nothing limits the key.
    pub fn write_for_validation(self, validation: &Validation, out: &mut impl HeaderSink) {
        self.write_for_validation_with(validation, None, out);
    }

    /// [`write_for_validation`](Self::write_for_validation), taking the
    /// policy's `RateLimit-Policy` value from `cache` (rendered there once
    /// per policy) when the request spent no credits.
    pub(crate) fn write_for_validation_with(
        self, validation: &Validation, cache: Option<&PolicyHeaders>, out: &mut impl HeaderSink,
    ) {
        match self {
            Self::None => {}
            Self::Legacy => {
                if let Some(closest) = closest(validation) {
                    legacy(closest.limit, closest.remaining, closest.reset_secs(), out);
                }
            }
            Self::Draft if cache.is_some() && validation.credits.is_none() && limits_all_checked(validation) => {
                let (Some(cache), Some(policy)) = (cache, validation.policy.as_ref()) else { return };
                cache.with_rendered(policy, validation.checked_at(), |rendered, last_state| {
                    if let Some(value) = &rendered.policy {
                        out.append_shared(names::RATELIMIT_POLICY, value);
                    }
                    // Without a quota (most policies) only the limits are
                    // compared, with nothing computed for the quota.
                    let closest = if validation.quota.is_none() {
                        closest_index(validation)
                            .map(|(index, status)| (index, u64::from(status.remaining), retry_after_secs(status.reset)))
                    } else {
                        closest(validation)
                            .map(|closest| (closest.slot, closest.remaining, closest.reset_secs().unwrap_or(0)))
                    };
                    if let Some((slot, remaining, reset)) = closest {
                        out.append_shared(names::RATELIMIT, rendered.state_value(last_state, slot, remaining, reset));
                    }
                });
            }
            Self::Draft => {
                let mut policies = ListSerializer::new();
                for (limit, _) in validation.rate_limit_states() {
                    limit_policy(&mut policies, limit);
                }
                if let Some(quota) = validation.policy.as_ref().and_then(|p| p.quota) {
                    quota_policy(&mut policies, quota, month_secs(validation.checked_at()));
                }
                if let Some(credits) = &validation.credits {
                    policy_item(
                        &mut policies,
                        CREDITS,
                        credits_quota(credits),
                        credits_window(credits, validation.checked_at()),
                    );
                }
                if let Some(value) = policies.finish() {
                    out.append_header(names::RATELIMIT_POLICY, &value);
                }
                if let Some(closest) = closest(validation) {
                    out.append_header(names::RATELIMIT, &state(closest.name, closest.remaining, closest.reset_secs()));
                }
            }
        }
    }

    /// Writes the headers of a request `limit` refused into `out`: that
    /// limit's policy and a state with nothing left until `retry_after`.
    pub fn write_for_refusal(
        self, limit: &RateLimit, status: &RateLimitStatus, retry_after: std::time::Duration, out: &mut impl HeaderSink,
    ) {
        match self {
            Self::None => {}
            Self::Legacy => {
                legacy(u64::from(status.limit), u64::from(status.remaining), Some(retry_after_secs(status.reset)), out);
            }
            Self::Draft => {
                let mut policies = ListSerializer::new();
                limit_policy(&mut policies, limit);
                if let Some(value) = policies.finish() {
                    out.append_header(names::RATELIMIT_POLICY, &value);
                }
                out.append_header(names::RATELIMIT, &state(&limit.name, 0, Some(retry_after_secs(retry_after))));
            }
        }
    }

    /// Writes the headers of a request refused at `now` by its quota or its
    /// credits into `out`, as a rate-limited refusal has them: the used-up
    /// quota's (`quota-daily`, `quota-monthly`) or the credits' member of
    /// `RateLimit-Policy` and a `RateLimit` with nothing left (`r=0`) and
    /// the seconds until it resets (`t`, when it does), or the legacy trio
    /// with the same numbers. Nothing for another refusal.
    pub(crate) fn write_for_exhausted(self, refusal: &Refusal, now: DateTime<Utc>, out: &mut impl HeaderSink) {
        let (name, quota, window, resets_at) = match refusal {
            Refusal::QuotaExceeded { resets_at, period: Period::Month, quota } => {
                (QUOTA_MONTHLY, *quota, Some(month_secs(now)), Some(*resets_at))
            }
            Refusal::QuotaExceeded { resets_at, quota, .. } => (QUOTA_DAILY, *quota, Some(DAY_SECS), Some(*resets_at)),
            Refusal::CreditsExhausted { status, .. } => {
                (CREDITS, credits_quota(status), credits_window(status, now), status.refills_at)
            }
            _ => return,
        };
        let reset = resets_at.map(|at| retry_after_secs(until(at, now)));
        match self {
            Self::None => {}
            Self::Legacy => legacy(quota, 0, reset, out),
            Self::Draft => {
                let mut policies = ListSerializer::new();
                policy_item(&mut policies, name, quota, window);
                if let Some(value) = policies.finish() {
                    out.append_header(names::RATELIMIT_POLICY, &value);
                }
                out.append_header(names::RATELIMIT, &state(name, 0, reset));
            }
        }
    }
}

/// One of a key's limits, quotas or credits as a request left it: what
/// `RateLimit` (or the legacy trio) reports of the one closest to refusing.
#[derive(Debug, Clone, Copy)]
struct Standing<'a> {
    /// Its name in the fields.
    name: &'a str,
    /// Its place among the policy's `RateLimit` prefixes: a limit's place
    /// in the policy, then `quota-daily`, `quota-monthly` and the credits.
    slot: usize,
    /// What `RateLimit-Limit` says: the limit's burst, the quota, the
    /// credits' `q`.
    limit: u64,
    /// Requests left.
    remaining: u64,
    /// Time until it resets; `None` for credits that never refill.
    reset: Option<std::time::Duration>,
}

impl Standing<'_> {
    /// `t`: whole seconds until it resets, rounded up.
    fn reset_secs(&self) -> Option<u64> {
        self.reset.map(retry_after_secs)
    }
}

/// Of `validation`'s rate limits, quotas and credits, the one closest to
/// refusing: fewest requests left, and of those the one that takes longest
/// to reset (credits that never refill last longest); the first listed of
/// equals.
fn closest(validation: &Validation) -> Option<Standing<'_>> {
    let now = validation.checked_at();
    let limits = validation.rate_limit_states().enumerate().map(|(slot, (limit, status))| Standing {
        name: &limit.name,
        slot,
        limit: u64::from(status.limit),
        remaining: u64::from(status.remaining),
        reset: Some(status.reset),
    });
    let policy = validation.policy.as_deref();
    let first_quota_slot = policy.map_or(0, |policy| policy.rate_limits.len());
    let quota = policy.and_then(|policy| policy.quota).filter(|_| !validation.quota.is_none()).unwrap_or_default();
    let quotas = [
        (QUOTA_DAILY, Period::Day, quota.daily, validation.quota.daily()),
        (QUOTA_MONTHLY, Period::Month, quota.monthly, validation.quota.monthly()),
    ];
    let quotas = quotas.into_iter().enumerate().filter_map(move |(index, (name, period, quota, left))| {
        Some(Standing {
            name,
            slot: first_quota_slot + index,
            limit: quota?,
            remaining: left?,
            reset: Some(until(period.next_start(now), now)),
        })
    });
    let credits = validation.credits.as_ref().map(|credits| Standing {
        name: CREDITS,
        slot: first_quota_slot + 2,
        limit: credits_quota(credits),
        remaining: credits.remaining,
        reset: credits.refills_at.map(|at| until(at, now)),
    });
    let lasting = |standing: &Standing<'_>| standing.reset.unwrap_or(std::time::Duration::MAX);
    limits
        .chain(quotas)
        .chain(credits)
        .min_by(|a, b| a.remaining.cmp(&b.remaining).then_with(|| lasting(b).cmp(&lasting(a))))
}

/// A header value in shared bytes, visible ASCII, cloned without copying:
/// rendered once for every response that carries it (a policy's
/// `RateLimit-Policy`), or per response in a per-thread arena (`RateLimit`,
/// kept by its thread while the next responses carry the same value).
/// Adapters hand its bytes to their framework's header value as they are
/// ([`HeaderSink::append_shared`]).
#[derive(Clone)]
pub struct SharedHeaderValue {
    bytes: Bytes,
    /// For a value rendered once, or written per response and come back:
    /// the adapter's own header value, made from `bytes` the first time it
    /// is written (`None` for a per-response value until it comes back).
    converted: Option<Arc<OnceLock<Box<dyn Any + Send + Sync>>>>,
}

impl PartialEq for SharedHeaderValue {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SharedHeaderValue {}

impl SharedHeaderValue {
    /// The value as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Built only from visible ASCII (`from_ascii`, `per_response`).
        std::str::from_utf8(&self.bytes).unwrap_or_default()
    }

    /// The value's bytes, shared.
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The framework's header value for these bytes: made by `convert`
    /// once for a value rendered once (a policy's `RateLimit-Policy`) or
    /// come back (a `RateLimit` with the same numbers), and cloned from
    /// then on, so that its bytes are not checked again per response; made
    /// each time for a per-response value until it comes back. `None` when
    /// `convert` refuses the bytes.
    pub fn converted<T>(&self, convert: impl Fn(&Bytes) -> Option<T>) -> Option<T>
    where
        T: Any + Clone + Send + Sync,
    {
        let Some(slot) = &self.converted else { return convert(&self.bytes) };
        let made = slot.get_or_init(|| match convert(&self.bytes) {
            Some(value) => Box::new(value),
            None => Box::new(()),
        });
        // Another framework's type (two adapters on one gate) is made per
        // response.
        match made.downcast_ref::<T>() {
            Some(value) => Some(value.clone()),
            None if made.is::<()>() => None,
            None => convert(&self.bytes),
        }
    }

    /// The value made of `parts` (visible ASCII, a few dozen bytes in
    /// all) written one after the other into its thread's arena of header
    /// bytes: the values written per response share one allocation per
    /// [`ARENA_BYTES`], rather than one each.
    fn per_response(parts: &[&[u8]]) -> Self {
        thread_local! {
            static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
        }
        let len = parts.iter().map(|part| part.len()).sum();
        debug_assert!(parts.iter().flat_map(|part| part.iter()).all(|&b| b.is_ascii_graphic() || b == b' '));
        ARENA.with_borrow_mut(|arena| {
            if arena.capacity() < len {
                *arena = BytesMut::with_capacity(ARENA_BYTES.max(len));
            }
            for part in parts {
                arena.extend_from_slice(part);
            }
            Self { bytes: arena.split().freeze(), converted: None }
        })
    }

    fn from_ascii(value: String) -> Self {
        debug_assert!(value.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        Self { bytes: Bytes::from(value), converted: Some(Arc::default()) }
    }
}

impl std::fmt::Debug for SharedHeaderValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Bytes of each thread's arena for the header values written per
/// response; it is freed once every response holding a value of it is.
const ARENA_BYTES: usize = 4096;

/// The rendered rate-limit headers of each policy a gate has seen: the
/// `RateLimit-Policy` value and, per limit, the start of its `RateLimit`
/// value (`"name";r=`), so that a request only writes its two numbers.
/// An entry is rendered again when the policy's limits or quota change, or
/// when a monthly quota's month changes length.
#[derive(Default)]
pub(crate) struct PolicyHeaders {
    rendered: DashMap<PolicyId, Arc<RenderedPolicy>, foldhash::fast::RandomState>,
}

/// Policies whose headers a gate keeps; past it the cache starts over
/// (policies are few; this only bounds deleted ones).
const MAX_RENDERED_POLICIES: usize = 4096;

thread_local! {
    /// The policy whose headers this thread wrote last, held (so that its
    /// address names no other policy while it is here), with its
    /// rendering: consecutive requests of one policy find it without the
    /// shared map's lock or hash, and with no reference count changed.
    static LAST_RENDERED: RefCell<Option<HeldRendering>> = const { RefCell::new(None) };
}

/// What [`LAST_RENDERED`] holds.
struct HeldRendering {
    policy: Arc<Policy>,
    rendered: Arc<RenderedPolicy>,
    /// The `RateLimit` value this thread wrote last with `rendered`.
    last_state: Option<StateValue>,
}

/// A `RateLimit` value with the numbers it was written from.
struct StateValue {
    index: usize,
    remaining: u64,
    reset: u64,
    value: SharedHeaderValue,
}

struct RenderedPolicy {
    rate_limits: Vec<RateLimit>,
    quota: Option<Quota>,
    month_secs: u64,
    policy: Option<SharedHeaderValue>,
    state_prefixes: Vec<String>,
}

impl RenderedPolicy {
    /// True when this is `policy`'s rendering in the month `month_secs`
    /// says (asked only of a policy with a monthly quota).
    fn renders(&self, policy: &Policy, month_secs: impl FnOnce() -> u64) -> bool {
        self.rate_limits == policy.rate_limits && self.quota == policy.quota && self.in_month(policy, month_secs)
    }

    /// True unless `policy` has a monthly quota and this rendering is of a
    /// month of another length than `month_secs`.
    fn in_month(&self, policy: &Policy, month_secs: impl FnOnce() -> u64) -> bool {
        policy.quota.is_none_or(|q| q.monthly.is_none()) || self.month_secs == month_secs()
    }

    /// The `RateLimit` value of the limit or quota at `index` (a
    /// [`Standing`]'s slot) with `remaining` requests left and `reset`
    /// seconds: the thread's last one when it has the
    /// same numbers, else the prefix and the two numbers written straight
    /// into the thread's arena, shared (so that a sink that keeps shared
    /// bytes does not copy it again). The same numbers come back request
    /// after request for every key under its limit's rate, whichever key:
    /// GCRA leaves it its burst less one, full again one emission
    /// interval later.
    /// A value that comes back gets a slot for the adapter's header value,
    /// so that from then on its bytes are neither written nor checked per
    /// response.
    fn state_value<'a>(
        &self, last: &'a mut Option<StateValue>, index: usize, remaining: u64, reset: u64,
    ) -> &'a SharedHeaderValue {
        let came_back =
            last.as_ref().is_some_and(|state| (state.index, state.remaining, state.reset) == (index, remaining, reset));
        if !came_back {
            *last = None;
        }
        let state = last.get_or_insert_with(|| {
            let (mut remaining_digits, mut reset_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
            let value = SharedHeaderValue::per_response(&[
                self.state_prefixes[index].as_bytes(),
                remaining_digits.format(remaining).as_bytes(),
                b";t=",
                reset_digits.format(reset).as_bytes(),
            ]);
            StateValue { index, remaining, reset, value }
        });
        if came_back {
            state.value.converted.get_or_insert_with(Arc::default);
        }
        &state.value
    }

    fn render(policy: &Policy, month_secs: u64) -> Self {
        let mut list = ListSerializer::new();
        for limit in &policy.rate_limits {
            limit_policy(&mut list, limit);
        }
        if let Some(quota) = policy.quota {
            quota_policy(&mut list, quota, month_secs);
        }
        // Each limit's, then the quotas' (whether the policy has them or
        // not: the slots of `Standing` say where they are).
        let names = policy.rate_limits.iter().map(|limit| limit.name.as_str()).chain([QUOTA_DAILY, QUOTA_MONTHLY]);
        let state_prefixes = names
            .map(|name| {
                // `"name";r=0`, less its digit.
                let mut prefix = state(name, 0, None);
                prefix.truncate(prefix.find(";r=").map_or(0, |at| at + 3));
                prefix
            })
            .collect();
        Self {
            rate_limits: policy.rate_limits.clone(),
            quota: policy.quota,
            month_secs,
            policy: list.finish().map(SharedHeaderValue::from_ascii),
            state_prefixes,
        }
    }
}

impl PolicyHeaders {
    /// Calls `write` with `policy`'s rendering at `now`, rendered first if
    /// this policy, as it is now, has none, and the `RateLimit` value the
    /// thread wrote last with it. The thread's last rendering is used when
    /// it is of this very policy value (a policy is immutable behind its
    /// `Arc`); else the gate's, which is kept in the thread for the next
    /// request.
    fn with_rendered<R>(
        &self, policy: &Arc<Policy>, now: DateTime<Utc>,
        write: impl FnOnce(&RenderedPolicy, &mut Option<StateValue>) -> R,
    ) -> R {
        LAST_RENDERED.with_borrow_mut(|last| {
            let current = last.as_ref().is_some_and(|held| {
                Arc::ptr_eq(&held.policy, policy) && held.rendered.in_month(policy, || month_secs(now))
            });
            if !current {
                *last = None;
            }
            let held = last.get_or_insert_with(|| HeldRendering {
                policy: Arc::clone(policy),
                rendered: self.shared_rendering(policy, now),
                last_state: None,
            });
            write(&held.rendered, &mut held.last_state)
        })
    }

    /// The gate's rendering of `policy` at `now`, rendered first if this
    /// policy, as it is now, has none.
    fn shared_rendering(&self, policy: &Policy, now: DateTime<Utc>) -> Arc<RenderedPolicy> {
        if let Some(rendered) = self.rendered.get(&policy.id)
            && rendered.renders(policy, || month_secs(now))
        {
            return Arc::clone(&rendered);
        }
        let rendered = Arc::new(RenderedPolicy::render(policy, month_secs(now)));
        if self.rendered.len() >= MAX_RENDERED_POLICIES {
            self.rendered.clear();
        }
        self.rendered.insert(policy.id, Arc::clone(&rendered));
        rendered
    }
}

/// True when the validation has a state for each of its policy's limits
/// (what the cached `RateLimit-Policy` lists).
fn limits_all_checked(validation: &Validation) -> bool {
    validation.policy.as_ref().is_some_and(|policy| policy.rate_limits.len() == validation.rate_limits.len())
}

/// The index, in the policy's `rate_limits`, of the limit closest to
/// refusing, with its state (asked only when every limit has a state).
fn closest_index(validation: &Validation) -> Option<(usize, &RateLimitStatus)> {
    // One limit, as most policies have: there is no choice to make.
    if let [status] = &validation.rate_limits[..] {
        return Some((0, status));
    }
    let (closest, _) = validation.closest_rate_limit()?;
    validation
        .rate_limit_states()
        .enumerate()
        .find(|(_, (limit, _))| std::ptr::eq(*limit, closest))
        .map(|(index, (_, status))| (index, status))
}

/// The names the daily and monthly quota have in the `RateLimit` fields.
const QUOTA_DAILY: &str = "quota-daily";
const QUOTA_MONTHLY: &str = "quota-monthly";

/// `"quota-daily"` and `"quota-monthly"` members of `RateLimit-Policy`.
fn quota_policy(list: &mut ListSerializer<String>, quota: Quota, month_secs: u64) {
    for (name, quota, window) in [(QUOTA_DAILY, quota.daily, DAY_SECS), (QUOTA_MONTHLY, quota.monthly, month_secs)] {
        if let Some(quota) = quota {
            policy_item(list, name, quota, Some(window));
        }
    }
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (whole seconds; none for
/// credits that never refill), each rendered from its number.
fn legacy(limit: u64, remaining: u64, reset: Option<u64>, out: &mut impl HeaderSink) {
    let mut digits = itoa::Buffer::new();
    out.append_header(names::RATELIMIT_LIMIT, digits.format(limit));
    out.append_header(names::RATELIMIT_REMAINING, digits.format(remaining));
    if let Some(reset) = reset {
        out.append_header(names::RATELIMIT_RESET, digits.format(reset));
    }
}

/// `"name";q=requests;w=window` for one rate limit (a window shorter than
/// a second is announced as one second: `w` is whole seconds).
fn limit_policy(list: &mut ListSerializer<String>, limit: &RateLimit) {
    let window = retry_after_secs(limit.window).max(1);
    policy_item(list, &limit.name, u64::from(limit.requests), Some(window));
}

const Q: &KeyRef = key_ref("q");
const W: &KeyRef = key_ref("w");
const R: &KeyRef = key_ref("r");
const T: &KeyRef = key_ref("t");

/// One member of `RateLimit-Policy`, `"name";q=quota;w=window` (no `w`
/// for credits without a refill). Names that are not a valid Structured
/// Field string are skipped (policy validation lets none through).
fn policy_item(list: &mut ListSerializer<String>, name: &str, quota: u64, window: Option<u64>) {
    if let Ok(name) = StringRef::from_str(name) {
        let item = list.bare_item(name).parameter(Q, integer(quota));
        if let Some(window) = window {
            item.parameter(W, integer(window));
        }
    }
}

/// The name credits have in the `RateLimit` fields.
const CREDITS: &str = "credits";

/// The credits' `q`: what a refill restores, or, for prepaid credits
/// without one, what was left before the request (`remaining + cost`).
fn credits_quota(credits: &CreditsStatus) -> u64 {
    credits.refill.map_or(credits.remaining.saturating_add(credits.cost), |refill| refill.amount)
}

/// The credits' `w`: their refill period at `now`, if they refill.
fn credits_window(credits: &CreditsStatus, now: DateTime<Utc>) -> Option<u64> {
    credits.refill.map(|refill| {
        u64::try_from((refill.every.next_start(now) - refill.every.start_of(now)).num_seconds()).unwrap_or(DAY_SECS)
    })
}

/// The `RateLimit` field: `"name";r=remaining;t=seconds` (no `t` for what
/// never resets).
fn state(name: &str, remaining: u64, reset: Option<u64>) -> String {
    let mut list = ListSerializer::new();
    if let Ok(name) = StringRef::from_str(name) {
        let item = list.bare_item(name).parameter(R, integer(remaining));
        if let Some(reset) = reset {
            item.parameter(T, integer(reset));
        }
    }
    list.finish().unwrap_or_default()
}

/// The time from `now` to `at` (none once past).
fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> std::time::Duration {
    (at - now).to_std().unwrap_or_default()
}

/// A Structured Field integer, capped at the largest one (15 digits):
/// policy bounds keep every real value far below it.
fn integer(value: u64) -> Integer {
    Integer::try_from(value).unwrap_or(Integer::MAX)
}

/// Seconds in the UTC calendar month of `at`, the window of a monthly quota.
fn month_secs(at: DateTime<Utc>) -> u64 {
    u64::from(at.date_naive().num_days_in_month()) * DAY_SECS
}

const _: () = assert!(PolicySpec::MAX_QUOTA < 999_999_999_999_999, "quotas fit a Structured Field integer");

#[cfg(test)]
mod tests {
    use super::{DAY_SECS, HeaderLookup, month_secs, names};

    #[test]
    fn a_monthly_quota_window_is_the_utc_calendar_month_of_the_request() {
        let at = |text: &str| text.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        assert_eq!(month_secs(at("2026-12-31T23:59:59Z")), 31 * DAY_SECS);
        assert_eq!(month_secs(at("2027-02-01T00:00:00Z")), 28 * DAY_SECS);
        assert_eq!(month_secs(at("2028-02-29T12:00:00Z")), 29 * DAY_SECS, "a leap year's February");
        assert_eq!(month_secs(at("2100-02-10T00:00:00Z")), 28 * DAY_SECS, "a century that is no leap year");
        assert_eq!(month_secs(at("2026-04-30T23:59:59Z")), 30 * DAY_SECS);
    }

    #[test]
    fn every_per_request_name_is_found_where_it_stands() {
        for (index, name) in names::PER_REQUEST.iter().enumerate() {
            assert_eq!(names::per_request_index(name), Some(index), "{name}");
        }
        assert_eq!(names::per_request_index("x-token"), None);
        assert_eq!(names::per_request_index("X-API-Key"), None, "names are looked up in lowercase");
        let read = [
            (names::Known::AUTHORIZATION, names::AUTHORIZATION),
            (names::Known::X_API_KEY, names::X_API_KEY),
            (names::Known::USER_AGENT, names::USER_AGENT),
            (names::Known::ORIGIN, names::ORIGIN),
            (names::Known::X_FORWARDED_FOR, names::X_FORWARDED_FOR),
            (names::Known::FORWARDED, names::FORWARDED),
            (names::Known::ACCESS_CONTROL_REQUEST_METHOD, names::ACCESS_CONTROL_REQUEST_METHOD),
        ];
        for (known, name) in read {
            assert_eq!((known.name(), names::Known::of(name)), (name, Some(known)));
        }
        assert_eq!(names::Known::of("x-token"), None);
    }

    #[test]
    fn pair_lists_match_names_case_insensitively_in_order() {
        let headers = [("X-Api-Key", "a"), ("other", "b"), ("x-api-key", "c")];
        let values: Vec<&[u8]> = headers.header_values("x-api-key").collect();
        assert_eq!(values, [b"a".as_slice(), b"c".as_slice()]);
        assert_eq!(headers[..].first_header("OTHER"), Some(b"b".as_slice()));
        assert_eq!(headers[..].first_header("missing"), None);
    }
}

#[cfg(test)]
mod shared_value_tests {
    use std::cell::Cell;

    use bytes::Bytes;

    use super::{ARENA_BYTES, RenderedPolicy, SharedHeaderValue};

    #[test]
    fn a_value_rendered_once_reads_back_compares_by_bytes_and_debugs_as_text() {
        let value = SharedHeaderValue::from_ascii(r#""burst";q=10;w=1"#.to_owned());
        assert_eq!(value.as_str(), r#""burst";q=10;w=1"#);
        assert_eq!(value.bytes().as_ref(), br#""burst";q=10;w=1"#);
        assert_eq!(format!("{value:?}"), r#""\"burst\";q=10;w=1""#);
        assert_eq!(value, SharedHeaderValue::per_response(&[br#""burst";q=10;"#, b"w=1"]));
        assert_ne!(value, SharedHeaderValue::from_ascii(r#""burst";q=10;w=2"#.to_owned()));
    }

    #[test]
    fn a_value_rendered_once_is_converted_once_and_a_refusal_is_kept() {
        let calls = Cell::new(0);
        let length = |bytes: &Bytes| {
            calls.set(calls.get() + 1);
            Some(bytes.len())
        };
        let value = SharedHeaderValue::from_ascii("abc".to_owned());
        assert_eq!((value.converted(length), value.clone().converted(length)), (Some(3), Some(3)));
        assert_eq!(calls.get(), 1, "converted once, for every clone");
        // Another framework's type is made each time.
        let text = |bytes: &Bytes| Some(String::from_utf8(bytes.to_vec()).unwrap());
        assert_eq!(value.converted(text).as_deref(), Some("abc"));
        assert_eq!(value.converted(text).as_deref(), Some("abc"));

        let refused = SharedHeaderValue::from_ascii("x".to_owned());
        let refuse = |_: &Bytes| {
            calls.set(calls.get() + 1);
            None::<usize>
        };
        assert_eq!((refused.converted(refuse), refused.converted(refuse)), (None, None));
        assert_eq!(calls.get(), 2, "a refused value is not converted again");

        let per_response = SharedHeaderValue::per_response(&[b"abc"]);
        assert_eq!((per_response.converted(length), per_response.converted(length)), (Some(3), Some(3)));
        assert_eq!(calls.get(), 4, "a per-response value is converted each time");
    }

    #[test]
    fn a_ratelimit_value_with_the_same_numbers_is_written_once_and_converted_once() {
        let rendered = RenderedPolicy {
            rate_limits: Vec::new(),
            quota: None,
            month_secs: 0,
            policy: None,
            state_prefixes: vec![r#""burst";r="#.to_owned(), r#""hourly";r="#.to_owned()],
        };
        let calls = Cell::new(0);
        let convert = |bytes: &Bytes| {
            calls.set(calls.get() + 1);
            Some(bytes.clone())
        };
        let mut last = None;
        let first = rendered.state_value(&mut last, 0, 9, 1).clone();
        assert_eq!(first.as_str(), r#""burst";r=9;t=1"#);
        assert_eq!(first.converted(convert).as_deref(), Some(first.bytes().as_ref()));
        let again = rendered.state_value(&mut last, 0, 9, 1).clone();
        assert_eq!(again.bytes().as_ptr(), first.bytes().as_ptr(), "the same numbers: the same value");
        assert_eq!(again.converted(convert), again.clone().converted(convert));
        assert_eq!(
            rendered.state_value(&mut last, 0, 9, 1).converted(convert).as_deref(),
            Some(first.bytes().as_ref())
        );
        assert_eq!(calls.get(), 2, "converted once when written, once when it came back");

        let written = |last: &mut Option<_>, index, remaining, reset| {
            rendered.state_value(last, index, remaining, reset).as_str().to_owned()
        };
        assert_eq!(written(&mut last, 0, 8, 1), r#""burst";r=8;t=1"#);
        assert_eq!(written(&mut last, 0, 8, 2), r#""burst";r=8;t=2"#);
        assert_eq!(written(&mut last, 1, 8, 2), r#""hourly";r=8;t=2"#);
        assert_eq!(written(&mut last, 0, 9, 1), r#""burst";r=9;t=1"#);
        assert_eq!(written(&mut last, 0, 9, 1), r#""burst";r=9;t=1"#);
    }

    #[test]
    fn values_written_per_response_share_their_threads_arena_until_it_is_full() {
        // A fresh thread: a fresh arena.
        std::thread::spawn(|| {
            let follows = |a: &SharedHeaderValue, b: &SharedHeaderValue| {
                b.bytes().as_ptr() == a.bytes().as_ptr().wrapping_add(a.bytes().len())
            };
            let first = SharedHeaderValue::per_response(&[br#""burst";r="#, b"9", b";t=", b"6"]);
            let second = SharedHeaderValue::per_response(&[br#""burst";r=8;t=12"#]);
            assert_eq!(first.as_str(), r#""burst";r=9;t=6"#);
            assert!(follows(&first, &second));
            let used = first.bytes().len() + second.bytes().len();
            let filler = SharedHeaderValue::per_response(&["x".repeat(ARENA_BYTES - used - 3).as_bytes()]);
            assert!(follows(&second, &filler));
            let last = SharedHeaderValue::per_response(&[b"ab", b"", b"c"]);
            assert!(follows(&filler, &last), "a value that fits exactly fills the arena");
            let next = SharedHeaderValue::per_response(&[b"d"]);
            assert_eq!((next.as_str(), last.as_str()), ("d", "abc"));
            let long = "y".repeat(ARENA_BYTES + 1);
            let longer = SharedHeaderValue::per_response(&[long.as_bytes(), b"z"]);
            assert_eq!(longer.bytes().len(), ARENA_BYTES + 2, "a value longer than an arena gets one of its own");
        })
        .join()
        .unwrap();
    }
}
