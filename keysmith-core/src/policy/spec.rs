//! What a caller writes to create or replace a policy, checked before
//! anything is stored.

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{LimitBy, Quota, RateLimit};
use crate::{Error, Result, input, scope};

/// The longest policy name, in characters.
pub(crate) const MAX_NAME_LEN: usize = 128;

/// A policy as the caller describes it: CIDRs and origins as text, checked
/// (and normalised) when a policy is created or updated,
/// never at request time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicySpec {
    /// The name, unique per tenant.
    pub name: String,
    /// Named rate limits, all enforced.
    pub rate_limits: Vec<RateLimit>,
    /// Whose budget the limits and quota count (`key` by default).
    pub limit_by: LimitBy,
    /// Networks (`10.0.0.0/8`, `2001:db8::/32`) or single addresses allowed.
    pub allowed_ips: Vec<String>,
    /// Exact `Origin` values allowed (`https://app.example.com`).
    pub allowed_origins: Vec<String>,
    /// Scopes keys under the policy may hold.
    pub allowed_scopes: Vec<String>,
    /// Maximum key age, in seconds in JSON.
    #[serde(with = "crate::serde_secs::option")]
    pub max_key_age: Option<Duration>,
    /// Daily and monthly quotas.
    pub quota: Option<Quota>,
    /// Default rotation grace, in seconds in JSON.
    #[serde(with = "crate::serde_secs::option")]
    pub rotation_grace: Option<Duration>,
    /// How many live keys one owner may hold under the policy (1 to
    /// [`MAX_KEYS_PER_OWNER`](Self::MAX_KEYS_PER_OWNER)).
    pub max_active_keys_per_owner: Option<u32>,
    /// Free-form JSON object.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A spec that passed validation, in stored form.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckedSpec {
    pub(crate) name: String,
    pub(crate) allowed_ips: Vec<IpNet>,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) allowed_scopes: Vec<String>,
}

/// A year and a day, in seconds.
const LEAP_YEAR: u64 = 366 * 24 * 60 * 60;

impl PolicySpec {
    /// The shortest rate-limit window.
    pub const MIN_WINDOW: Duration = Duration::from_millis(1);
    /// The longest rate-limit window (366 days).
    pub const MAX_WINDOW: Duration = Duration::from_secs(LEAP_YEAR);
    /// The most requests a rate limit allows per window, and the largest burst.
    pub const MAX_REQUESTS: u32 = 1_000_000;
    /// The longest time a rate limit may take to refill a full burst
    /// (`window × burst / requests`, 366 days): the limiter's state for a
    /// key never reaches further ahead than this.
    pub const MAX_REFILL: Duration = Duration::from_secs(LEAP_YEAR);
    /// The most rate limits one policy may hold.
    pub const MAX_RATE_LIMITS: usize = 8;
    /// The longest rate-limit name, in characters.
    pub const MAX_LIMIT_NAME_LEN: usize = 32;
    /// Names a rate limit cannot take: the `RateLimit-Policy` header lists
    /// the quota and credits under these.
    pub const RESERVED_LIMIT_NAMES: [&'static str; 3] = ["quota-daily", "quota-monthly", "credits"];
    /// The largest daily or monthly quota.
    pub const MAX_QUOTA: u64 = 1_000_000_000_000;
    /// The longest maximum key age (100 years of 365.25 days).
    pub const MAX_KEY_AGE: Duration = Duration::from_secs(36_525 * 24 * 60 * 60);
    /// The longest default rotation grace (366 days).
    pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(LEAP_YEAR);
    /// The largest `max_active_keys_per_owner`.
    pub const MAX_KEYS_PER_OWNER: u32 = 100_000;
    /// The most entries of `allowed_ips`, of `allowed_origins` and of
    /// `allowed_scopes` each: every request under the policy reads them.
    pub const MAX_ALLOWLIST_LEN: usize = 1_000;

    /// A spec with only a name (a policy that limits nothing yet).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), ..Self::default() }
    }

    /// With one rate limit of `requests` per `window`, named `default`
    /// (replacing any limits set before).
    #[must_use]
    pub fn with_rate_limit(mut self, requests: u32, window: Duration) -> Self {
        self.rate_limits = vec![RateLimit::new(RateLimit::DEFAULT_NAME, requests, window)];
        self
    }

    /// With one more named limit: `.with_limit(RateLimit::new("burst", 10,
    /// Duration::from_secs(1))).with_limit(RateLimit::new("hourly", 1000,
    /// Duration::from_secs(3600)))`. Every limit is enforced.
    #[must_use]
    pub fn with_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limits.push(limit);
        self
    }

    /// Counting the limits and quota per key lineage or per owner.
    #[must_use]
    pub fn with_limit_by(mut self, limit_by: LimitBy) -> Self {
        self.limit_by = limit_by;
        self
    }

    /// With these allowed networks.
    #[must_use]
    pub fn with_allowed_ips<S: Into<String>>(mut self, cidrs: impl IntoIterator<Item = S>) -> Self {
        self.allowed_ips = cidrs.into_iter().map(Into::into).collect();
        self
    }

    /// With these allowed origins.
    #[must_use]
    pub fn with_allowed_origins<S: Into<String>>(mut self, origins: impl IntoIterator<Item = S>) -> Self {
        self.allowed_origins = origins.into_iter().map(Into::into).collect();
        self
    }

    /// With these allowed scopes.
    #[must_use]
    pub fn with_allowed_scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.allowed_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// With a maximum key age.
    #[must_use]
    pub fn with_max_key_age(mut self, age: Duration) -> Self {
        self.max_key_age = Some(age);
        self
    }

    /// With quotas per UTC day and month.
    #[must_use]
    pub fn with_quota(mut self, daily: Option<u64>, monthly: Option<u64>) -> Self {
        self.quota = Some(Quota { daily, monthly });
        self
    }

    /// With a default rotation grace.
    #[must_use]
    pub fn with_rotation_grace(mut self, grace: Duration) -> Self {
        self.rotation_grace = Some(grace);
        self
    }

    /// Lets one owner hold at most `keys` live keys under the policy.
    #[must_use]
    pub fn with_max_active_keys_per_owner(mut self, keys: u32) -> Self {
        self.max_active_keys_per_owner = Some(keys);
        self
    }

    /// What this policy, once written, would refuse `key` for on a request
    /// from `client_ip` at `now`, of the checks that depend on the request
    /// and the key's age alone: the client address
    /// ([`Refusal::IpNotAllowed`](crate::Refusal::IpNotAllowed), an unknown
    /// address included) and the maximum key age
    /// ([`Refusal::Expired`](crate::Refusal::Expired)). `None` when it would
    /// refuse neither. What an admin API asks before a key changes the
    /// policy it stands under.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] as writing the policy would answer.
    pub fn refusal_for(
        &self, key: &crate::Key, client_ip: Option<std::net::IpAddr>, now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<crate::Refusal>> {
        let checked = self.validate()?;
        Ok(if !crate::net::allows(&checked.allowed_ips, client_ip) {
            Some(crate::Refusal::IpNotAllowed)
        } else if crate::key::past_max_age(key, self.max_key_age, now) {
            Some(crate::Refusal::Expired)
        } else {
            None
        })
    }

    /// Checks every field; the error names the first one at fault.
    pub(crate) fn validate(&self) -> Result<CheckedSpec> {
        let name = input::check_name(&self.name, MAX_NAME_LEN)?;
        check_rate_limits(&self.rate_limits)?;
        if let Some(quota) = &self.quota {
            for (field, value) in [("quota.daily", quota.daily), ("quota.monthly", quota.monthly)] {
                if value.is_some_and(|v| v == 0 || v > Self::MAX_QUOTA) {
                    return Err(Error::invalid(
                        field,
                        format!("must be 1 to {} (omit it for no quota)", Self::MAX_QUOTA),
                    ));
                }
            }
        }
        if let Some(age) = self.max_key_age
            && (age < Duration::from_secs(1) || age > Self::MAX_KEY_AGE)
        {
            return Err(Error::invalid("max_key_age", format!("must be 1 to {} seconds", Self::MAX_KEY_AGE.as_secs())));
        }
        if self.rotation_grace.is_some_and(|grace| grace > Self::MAX_ROTATION_GRACE) {
            return Err(Error::invalid(
                "rotation_grace",
                format!("must be at most {} seconds", Self::MAX_ROTATION_GRACE.as_secs()),
            ));
        }
        if self.max_active_keys_per_owner.is_some_and(|n| n == 0 || n > Self::MAX_KEYS_PER_OWNER) {
            return Err(Error::invalid(
                "max_active_keys_per_owner",
                format!("must be 1 to {} (omit it for no limit)", Self::MAX_KEYS_PER_OWNER),
            ));
        }
        for (field, len) in [
            ("allowed_ips", self.allowed_ips.len()),
            ("allowed_origins", self.allowed_origins.len()),
            ("allowed_scopes", self.allowed_scopes.len()),
        ] {
            if len > Self::MAX_ALLOWLIST_LEN {
                return Err(Error::invalid(field, format!("at most {} entries", Self::MAX_ALLOWLIST_LEN)));
            }
        }
        let allowed_ips = self.allowed_ips.iter().map(|s| parse_network(s)).collect::<Result<Vec<_>>>()?;
        let allowed_origins = self.allowed_origins.iter().map(|s| normalize_origin(s)).collect::<Result<Vec<_>>>()?;
        for name in &self.allowed_scopes {
            scope::validate_name(name)?;
        }
        input::check_metadata("metadata", &self.metadata)?;
        // Each once, in the order given, as a key's scopes are.
        let mut allowed_scopes: Vec<String> = Vec::with_capacity(self.allowed_scopes.len());
        for name in &self.allowed_scopes {
            if !allowed_scopes.contains(name) {
                allowed_scopes.push(name.clone());
            }
        }
        Ok(CheckedSpec { name: name.to_owned(), allowed_ips, allowed_origins, allowed_scopes })
    }
}

/// Bounds the list (count, unique names) and each limit in it.
fn check_rate_limits(limits: &[RateLimit]) -> Result<()> {
    if limits.len() > PolicySpec::MAX_RATE_LIMITS {
        return Err(Error::invalid(
            "rate_limits",
            format!("at most {} limits per policy (got {})", PolicySpec::MAX_RATE_LIMITS, limits.len()),
        ));
    }
    for (index, limit) in limits.iter().enumerate() {
        check_limit_name(&limit.name)?;
        if limits[..index].iter().any(|earlier| earlier.name == limit.name) {
            return Err(Error::invalid("rate_limits.name", format!("{:?} names two limits", limit.name)));
        }
        check_rate_limit(limit)?;
    }
    Ok(())
}

/// `[a-z0-9]` then `[a-z0-9_-]`, at most [`PolicySpec::MAX_LIMIT_NAME_LEN`]
/// characters, not reserved: a name that is safe in a header, a store key
/// and a URL alike.
fn check_limit_name(name: &str) -> Result<()> {
    let max = PolicySpec::MAX_LIMIT_NAME_LEN;
    let valid = name.len() <= max
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if !valid {
        return Err(Error::invalid(
            "rate_limits.name",
            format!("{name:?} must be 1 to {max} characters of a-z, 0-9, `_` and `-`, starting with a letter or digit"),
        ));
    }
    if PolicySpec::RESERVED_LIMIT_NAMES.contains(&name) {
        return Err(Error::invalid(
            "rate_limits.name",
            format!(
                "{name:?} is reserved (the headers list the quota and credits under {:?})",
                PolicySpec::RESERVED_LIMIT_NAMES
            ),
        ));
    }
    Ok(())
}

/// Bounds a rate limit so the limiter can always enforce it: the cost of
/// one request (`window / requests`) is at least a nanosecond and a full
/// burst refills within [`PolicySpec::MAX_REFILL`].
fn check_rate_limit(limit: &RateLimit) -> Result<()> {
    let max = PolicySpec::MAX_REQUESTS;
    let name = &limit.name;
    if limit.requests == 0 || limit.requests > max {
        return Err(Error::invalid("rate_limits.requests", format!("limit {name:?}: must be 1 to {max}")));
    }
    if limit.window < PolicySpec::MIN_WINDOW || limit.window > PolicySpec::MAX_WINDOW {
        return Err(Error::invalid(
            "rate_limits.window",
            format!("limit {name:?}: must be 1 millisecond to {} seconds", PolicySpec::MAX_WINDOW.as_secs()),
        ));
    }
    let burst = limit.burst.unwrap_or(limit.requests);
    if burst == 0 || burst > max {
        return Err(Error::invalid("rate_limits.burst", format!("limit {name:?}: must be 1 to {max}")));
    }
    let refill = limit.window.as_nanos() * u128::from(burst) / u128::from(limit.requests);
    if refill > PolicySpec::MAX_REFILL.as_nanos() {
        return Err(Error::invalid(
            "rate_limits.burst",
            format!(
                "limit {name:?}: a full burst must refill within {} seconds (window × burst / requests)",
                PolicySpec::MAX_REFILL.as_secs()
            ),
        ));
    }
    Ok(())
}

/// A CIDR, or a single address taken as a host network (`/32`, `/128`),
/// canonical: IPv4-mapped IPv6 networks are stored as their IPv4 networks.
fn parse_network(text: &str) -> Result<IpNet> {
    crate::net::parse_net(text).ok_or_else(|| {
        Error::invalid("allowed_ips", format!("{:?} is not a CIDR (e.g. 10.0.0.0/8) or an IP address", text.trim()))
    })
}

/// `scheme://host[:port]`, lowercased, without a trailing slash.
fn normalize_origin(text: &str) -> Result<String> {
    let origin = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let valid = origin.split_once("://").is_some_and(|(scheme, host)| {
        !scheme.is_empty()
            && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            && !host.is_empty()
            && !host.contains(['/', ' ', '?', '#'])
            && !host.chars().any(char::is_control)
    });
    if !valid {
        return Err(Error::invalid(
            "allowed_origins",
            format!("{text:?} is not an origin (e.g. https://app.example.com)"),
        ));
    }
    Ok(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_from_cidrs_and_addresses() {
        assert_eq!(parse_network("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_network("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(parse_network("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
        assert_eq!(parse_network("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_network("::ffff:203.0.113.0/120").unwrap().to_string(), "203.0.113.0/24");
        assert_eq!(parse_network("::ffff:203.0.113.5").unwrap().to_string(), "203.0.113.5/32");
        for bad in ["10.0.0.0/33", "300.1.1.1", "10.0.0.0/", "", "example.com", "2001:db8::/129"] {
            let err = parse_network(bad).unwrap_err().to_string();
            assert!(err.contains("allowed_ips"), "{err}");
        }
    }

    #[test]
    fn origins_are_normalised() {
        assert_eq!(normalize_origin("HTTPS://App.Example.com/").unwrap(), "https://app.example.com");
        assert_eq!(normalize_origin("http://localhost:3000").unwrap(), "http://localhost:3000");
        for bad in
            ["app.example.com", "https://", "https://a.com/path", "://x", "https://a\0.com", "https://a.com\u{7f}"]
        {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_limit_names_are_checked_and_unique() {
        let second = Duration::from_secs(1);
        let named = |name: &str| PolicySpec::new("p").with_limit(RateLimit::new(name, 1, second));
        for good in ["burst", "hourly", "per-minute", "a_1", "0", &"x".repeat(32)] {
            assert!(named(good).validate().is_ok(), "{good}");
        }
        for bad in ["", "Burst", "-a", "_a", "a b", "a.b", "a\0", "quota-daily", "credits", &"x".repeat(33)] {
            match named(bad).validate() {
                Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "rate_limits.name", "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let twice = named("burst").with_limit(RateLimit::new("burst", 2, second));
        let err = twice.validate().unwrap_err().to_string();
        assert!(err.contains("\"burst\" names two limits"), "{err}");
        let mut many = PolicySpec::new("p");
        for i in 0..=PolicySpec::MAX_RATE_LIMITS {
            many = many.with_limit(RateLimit::new(format!("l{i}"), 1, second));
        }
        assert!(matches!(many.validate(), Err(Error::InvalidInput { field: "rate_limits", .. })));
        // The shorthand is one limit named `default`, replacing earlier ones.
        let short = named("burst").with_rate_limit(5, second);
        assert_eq!(short.rate_limits, [RateLimit::new("default", 5, second)]);
    }

    #[test]
    fn a_bad_limit_is_named_in_the_error() {
        let spec = PolicySpec::new("p")
            .with_limit(RateLimit::new("burst", 10, Duration::from_secs(1)))
            .with_limit(RateLimit::new("hourly", 0, Duration::from_secs(3600)));
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("rate_limits.requests") && err.contains("\"hourly\""), "{err}");
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        let zero_rate = PolicySpec::new("p").with_rate_limit(0, Duration::from_secs(1));
        let zero_quota = PolicySpec::new("p").with_quota(Some(0), None);
        let bad_scope = PolicySpec::new("p").with_allowed_scopes(["read users"]);
        let no_name = PolicySpec::new(" ");
        let nul_name = PolicySpec::new("p\0");
        let mut nul_metadata = PolicySpec::new("p");
        nul_metadata.metadata.insert("note".to_owned(), "a\0".into());
        let cases = [
            (zero_rate, "rate_limits.requests"),
            (zero_quota, "quota.daily"),
            (bad_scope, "scope"),
            (no_name, "name"),
            (nul_name, "name"),
            (nul_metadata, "metadata"),
        ];
        for (spec, field) in cases {
            match spec.validate() {
                Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
    }

    /// The field `spec` is refused for, or `None` when it is accepted.
    fn refused_field(spec: &PolicySpec) -> Option<&'static str> {
        match spec.validate() {
            Ok(_) => None,
            Err(Error::InvalidInput { field, .. }) => Some(field),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_bound_is_inclusive_and_one_past_it_is_refused() {
        let p = || PolicySpec::new("p");
        let second = Duration::from_secs(1);
        let beyond = |d: Duration| d + Duration::from_nanos(1);
        let cases = [
            (p().with_quota(Some(1), Some(PolicySpec::MAX_QUOTA)), None),
            (p().with_quota(Some(PolicySpec::MAX_QUOTA), Some(1)), None),
            (p().with_quota(None, None), None),
            (p().with_quota(Some(PolicySpec::MAX_QUOTA + 1), None), Some("quota.daily")),
            (p().with_quota(None, Some(PolicySpec::MAX_QUOTA + 1)), Some("quota.monthly")),
            (p().with_quota(Some(5), Some(0)), Some("quota.monthly")),
            (p().with_max_key_age(second), None),
            (p().with_max_key_age(PolicySpec::MAX_KEY_AGE), None),
            // 100 years of 365.25 days, and a second more.
            (p().with_max_key_age(Duration::from_secs(100 * 31_557_600)), None),
            (p().with_max_key_age(Duration::from_secs(100 * 31_557_600 + 1)), Some("max_key_age")),
            // 366 days of grace, and a second more.
            (p().with_rotation_grace(Duration::from_secs(366 * 86_400)), None),
            (p().with_rotation_grace(Duration::from_secs(366 * 86_400 + 1)), Some("rotation_grace")),
            (p().with_max_key_age(second - Duration::from_nanos(1)), Some("max_key_age")),
            (p().with_max_key_age(beyond(PolicySpec::MAX_KEY_AGE)), Some("max_key_age")),
            (p().with_rotation_grace(Duration::ZERO), None),
            (p().with_rotation_grace(PolicySpec::MAX_ROTATION_GRACE), None),
            (p().with_rotation_grace(beyond(PolicySpec::MAX_ROTATION_GRACE)), Some("rotation_grace")),
            (p().with_max_active_keys_per_owner(1), None),
            (p().with_max_active_keys_per_owner(PolicySpec::MAX_KEYS_PER_OWNER), None),
            (p().with_max_active_keys_per_owner(0), Some("max_active_keys_per_owner")),
            (p().with_max_active_keys_per_owner(PolicySpec::MAX_KEYS_PER_OWNER + 1), Some("max_active_keys_per_owner")),
        ];
        for (i, (spec, field)) in cases.iter().enumerate() {
            assert_eq!(refused_field(spec), *field, "case {i}: {spec:?}");
        }
    }

    #[test]
    fn a_rate_limit_is_bounded_so_the_limiter_can_enforce_it() {
        let max = PolicySpec::MAX_REQUESTS;
        let limit = |requests, window, burst| {
            let mut spec = PolicySpec::new("p");
            spec.rate_limits = vec![RateLimit { name: "l".to_owned(), requests, window, burst }];
            spec
        };
        let day = Duration::from_secs(86_400);
        let cases = [
            (limit(1, PolicySpec::MIN_WINDOW, None), None),
            (limit(max, PolicySpec::MAX_WINDOW, Some(max)), None),
            // A full burst refills in exactly the longest time.
            (limit(1, PolicySpec::MAX_WINDOW, None), None),
            (limit(2, PolicySpec::MAX_WINDOW, Some(2)), None),
            (limit(366, PolicySpec::MAX_WINDOW, Some(366)), None),
            (limit(1, day, Some(366)), None),
            (limit(1, day, Some(367)), Some("rate_limits.burst")),
            (limit(1000, day, Some(366_000)), None),
            (limit(3, Duration::from_secs(3 * 86_400), Some(367)), Some("rate_limits.burst")),
            (limit(0, day, None), Some("rate_limits.requests")),
            (limit(max + 1, day, None), Some("rate_limits.requests")),
            (limit(1, Duration::ZERO, None), Some("rate_limits.window")),
            (limit(1, PolicySpec::MIN_WINDOW - Duration::from_nanos(1), None), Some("rate_limits.window")),
            (limit(1, PolicySpec::MAX_WINDOW + Duration::from_nanos(1), None), Some("rate_limits.window")),
            (limit(5, day, Some(0)), Some("rate_limits.burst")),
            (limit(5, day, Some(max + 1)), Some("rate_limits.burst")),
        ];
        for (i, (spec, field)) in cases.iter().enumerate() {
            assert_eq!(refused_field(spec), *field, "case {i}: {:?}", spec.rate_limits);
        }
        let mut eight = PolicySpec::new("p");
        for i in 0..PolicySpec::MAX_RATE_LIMITS {
            eight = eight.with_limit(RateLimit::new(format!("l{i}"), 1, Duration::from_secs(1)));
        }
        assert_eq!(refused_field(&eight), None, "eight limits are accepted");
        let apart = PolicySpec::new("p")
            .with_limit(RateLimit::new("a", 1, Duration::from_secs(1)))
            .with_limit(RateLimit::new("b", 1, Duration::from_secs(1)))
            .with_limit(RateLimit::new("a", 1, Duration::from_secs(1)));
        assert_eq!(refused_field(&apart), Some("rate_limits.name"), "a name used again later");
    }

    #[test]
    fn origin_schemes_are_letters_digits_plus_minus_and_dots() {
        for good in ["chrome-extension://abc", "coap+tcp://h", "a.b://h", "x1://h:8080"] {
            assert_eq!(normalize_origin(good).unwrap(), good, "{good}");
        }
        for bad in ["ht_tp://h", "ht tp://h", "https://a b", "https://a?b", "https://a#b", "https://a\tb"] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
        assert_eq!(normalize_origin("  https://a.example/// ").unwrap(), "https://a.example");
    }

    #[test]
    fn a_checked_spec_keeps_the_normalised_lists() {
        let spec = PolicySpec::new("  partners  ")
            .with_allowed_ips(["10.1.2.3/8", "192.0.2.7"])
            .with_allowed_origins(["HTTPS://App.Example.com/"])
            .with_allowed_scopes(["read", "write:users"]);
        let checked = spec.validate().unwrap();
        assert_eq!(
            checked,
            CheckedSpec {
                name: "partners".to_owned(),
                allowed_ips: vec!["10.0.0.0/8".parse().unwrap(), "192.0.2.7/32".parse().unwrap()],
                allowed_origins: vec!["https://app.example.com".to_owned()],
                allowed_scopes: vec!["read".to_owned(), "write:users".to_owned()],
            }
        );
        let bad_ip = PolicySpec::new("p").with_allowed_ips(["10.0.0.0/33"]);
        let bad_origin = PolicySpec::new("p").with_allowed_origins(["app.example.com"]);
        assert_eq!(
            (refused_field(&bad_ip), refused_field(&bad_origin)),
            (Some("allowed_ips"), Some("allowed_origins"))
        );
    }

    #[test]
    fn builders_set_their_fields() {
        let minute = Duration::from_secs(60);
        let spec = PolicySpec::new("p")
            .with_limit_by(LimitBy::Owner)
            .with_max_key_age(minute)
            .with_rotation_grace(minute)
            .with_max_active_keys_per_owner(3)
            .with_quota(Some(10), None);
        assert_eq!(spec.limit_by, LimitBy::Owner);
        assert_eq!((spec.max_key_age, spec.rotation_grace), (Some(minute), Some(minute)));
        assert_eq!(spec.max_active_keys_per_owner, Some(3));
        assert_eq!(spec.quota, Some(Quota { daily: Some(10), monthly: None }));
        assert_eq!(spec.name, "p");
    }
}
