//! Policies: the limits a key is held to at validation.

mod spec;

use std::time::Duration;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{PolicyId, Tenant};

pub use spec::PolicySpec;

/// A named set of limits, shared by the keys that reference it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The policy's id.
    pub id: PolicyId,
    /// The owner.
    pub tenant: Tenant,
    /// The name, unique per tenant.
    pub name: String,
    /// Named rate limits, every one enforced (a request must fit them all).
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
    /// Whose budget the rate limits, quota and credits count: each key's
    /// lineage, or all keys of the key's owner together.
    #[serde(default)]
    pub limit_by: LimitBy,
    /// Client networks allowed to use the keys; empty allows all.
    pub allowed_ips: Vec<IpNet>,
    /// `Origin` values allowed; empty allows all.
    pub allowed_origins: Vec<String>,
    /// The scopes keys under this policy may hold; empty allows any.
    pub allowed_scopes: Vec<String>,
    /// Keys older than this are expired, in seconds in JSON.
    #[serde(default, with = "crate::serde_secs::option")]
    pub max_key_age: Option<Duration>,
    /// Daily and monthly request quotas, per key lineage (per owner under
    /// `limit_by: owner`).
    pub quota: Option<Quota>,
    /// Default grace period for rotations of keys under this policy, in seconds in JSON.
    #[serde(default, with = "crate::serde_secs::option")]
    pub rotation_grace: Option<Duration>,
    /// How many live keys (`active` or `suspended`) one owner may hold under
    /// this policy; creating one more is refused with
    /// [`Error::OwnerKeyLimit`](crate::Error::OwnerKeyLimit). `1` is "one
    /// key per customer". Rotation keeps the count: the rotated key is no
    /// longer live. Keys without an owner are not counted.
    #[serde(default)]
    pub max_active_keys_per_owner: Option<u32>,
    /// Free-form JSON object for the application.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Time of the last change.
    pub updated_at: DateTime<Utc>,
}

impl Policy {
    /// True if `ip` is inside the allowlist. IPv4-mapped IPv6 is canonical
    /// on both sides: `::ffff:192.0.2.1` counts as `192.0.2.1`, and an entry
    /// `::ffff:192.0.2.0/120` as `192.0.2.0/24`. An empty list allows every
    /// address; an unknown address (`None`) passes no list.
    #[must_use]
    pub fn allows_ip(&self, ip: Option<std::net::IpAddr>) -> bool {
        crate::net::allows(&self.allowed_ips, ip)
    }

    /// True if `origin` is in the allowlist (compared as normalised origins).
    /// An empty list allows every origin.
    #[must_use]
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins.is_empty()
            || self.allowed_origins.iter().any(|allowed| {
                let origin = origin.trim_end_matches('/');
                allowed.eq_ignore_ascii_case(origin)
            })
    }
}

/// A named limit: `requests` per `window`, with an optional burst above
/// the steady rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// The limit's name, unique in its policy (`burst`, `hourly`): a
    /// refusal and the `RateLimit` headers say which limit they concern.
    pub name: String,
    /// Requests allowed per window.
    pub requests: u32,
    /// The window, in seconds in JSON.
    #[serde(with = "crate::serde_secs")]
    pub window: Duration,
    /// Requests allowed at once (defaults to `requests`).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// The name [`PolicySpec::with_rate_limit`] gives its one limit.
    pub const DEFAULT_NAME: &'static str = "default";

    /// `requests` per `window` under `name`, the burst equal to `requests`.
    pub fn new(name: impl Into<String>, requests: u32, window: Duration) -> Self {
        Self { name: name.into(), requests, window, burst: None }
    }

    /// With `burst` requests allowed at once.
    #[must_use]
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Requests allowed at once: the burst, else `requests`.
    #[must_use]
    pub fn effective_burst(&self) -> u32 {
        self.burst.filter(|b| *b > 0).unwrap_or(self.requests)
    }
}

crate::names::string_enum! {
    /// Whose budget a policy's rate limits, quota and credits count.
    #[derive(Default)]
    #[non_exhaustive]
    pub enum LimitBy("limit_by") {
        /// Each key's own budget (shared with the keys it was rotated from or to).
        ///
        /// The budget is the key's lineage: rotating a key does not reset it.
        #[default]
        Key = "key",
        /// One budget for all keys of the key's owner.
        ///
        /// Credits included: the owner's balance, not the key's. A key
        /// without an owner ([`Key::owner_id`](crate::Key::owner_id)) keeps
        /// its own (lineage) budget.
        Owner = "owner",
    }
}

/// Request quotas per key lineage (per owner under `limit_by: owner`),
/// counted in UTC days and months.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Quota {
    /// Requests per UTC day.
    pub daily: Option<u64>,
    /// Requests per UTC calendar month.
    pub monthly: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RateLimit;
    use crate::{Engine, MemoryStore, NewKey, PolicySpec, Refusal, RequestContext, ValidationError};

    #[test]
    fn the_effective_burst_is_the_burst_else_the_request_count() {
        let limit = RateLimit::new("l", 5, Duration::from_secs(1));
        assert_eq!(limit.effective_burst(), 5);
        assert_eq!(limit.clone().with_burst(12).effective_burst(), 12);
        assert_eq!(limit.clone().with_burst(1).effective_burst(), 1);
        assert_eq!(RateLimit { burst: Some(0), ..limit }.effective_burst(), 5, "a zero burst is no burst");
    }

    #[tokio::test]
    async fn a_key_under_an_origin_allowlist_passes_from_those_origins_only() {
        let engine = Engine::builder(MemoryStore::new()).build().unwrap();
        let acme = engine.tenant("app", "acme");
        let web = acme.create_policy(PolicySpec::new("web").with_allowed_origins(["https://app.example.com"])).await;
        let key = acme.create_key(NewKey::new("k").with_policy(web.unwrap().id)).await.unwrap();
        let answer = |origin: &'static str| {
            let engine = engine.clone();
            let raw = key.raw.expose().to_owned();
            async move { engine.validate(&raw, &RequestContext::new().with_origin(origin)).await.map(|_| ()) }
        };
        for origin in ["https://app.example.com", "HTTPS://APP.EXAMPLE.COM", "https://app.example.com/"] {
            assert!(answer(origin).await.is_ok(), "{origin}");
        }
        for origin in ["https://evil.example.com", "https://app.example.com.evil", "http://app.example.com", "null"] {
            let refused = answer(origin).await;
            assert!(matches!(refused, Err(ValidationError::Refused(Refusal::OriginNotAllowed))), "{origin}");
        }
        // A request without an Origin (not from a browser) is not refused for it.
        assert!(engine.validate(key.raw.expose(), &RequestContext::new()).await.is_ok());
    }
}
