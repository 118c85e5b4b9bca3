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
    /// Requests allowed per window, per key.
    pub rate_limit: Option<RateLimit>,
    /// Client networks allowed to use the keys; empty allows all.
    pub allowed_ips: Vec<IpNet>,
    /// `Origin` values allowed; empty allows all.
    pub allowed_origins: Vec<String>,
    /// The scopes keys under this policy may hold; empty allows any.
    pub allowed_scopes: Vec<String>,
    /// Keys older than this are expired, in seconds in JSON.
    #[serde(default, with = "crate::serde_secs::option")]
    pub max_key_age: Option<Duration>,
    /// Daily and monthly request quotas, per key.
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
        if self.allowed_ips.is_empty() {
            return true;
        }
        ip.map(|ip| ip.to_canonical())
            .is_some_and(|ip| self.allowed_ips.iter().any(|net| crate::net::contains(net, ip)))
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

/// `requests` per `window`, with an optional burst above the steady rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// The window, in seconds in JSON.
    #[serde(with = "crate::serde_secs")]
    pub window: Duration,
    /// Requests allowed at once (defaults to `requests`).
    pub burst: Option<u32>,
}

/// Request quotas per key, counted in UTC days and months.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Quota {
    /// Requests per UTC day.
    pub daily: Option<u64>,
    /// Requests per UTC calendar month.
    pub monthly: Option<u64>,
}
