//! What a request brings to validation besides its key: [`RequestContext`]
//! and the [`RequiredScopes`] it asks for.

use std::net::IpAddr;

use crate::scope;

/// What is known about the request a key came with. Everything is optional;
/// policy checks that need a missing fact refuse (an IP allowlist with no IP).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContext<'a> {
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// The HTTP method.
    pub method: Option<&'a str>,
    /// The request path.
    pub path: Option<&'a str>,
    /// Scopes the key must all cover.
    pub required_scopes: RequiredScopes<'a>,
    /// Accept only keys of this application (compared exactly); another
    /// app's key is refused as unknown before any of its limits are touched.
    /// An id that is not an identity ([`validate_id`](crate::validate_id))
    /// fails the validation with [`Error::InvalidInput`](crate::Error::InvalidInput).
    pub app_id: Option<&'a str>,
    /// Accept only keys of this tenant (of `app_id`'s app, compared
    /// exactly); another tenant's key is refused as unknown before any of
    /// its limits are touched. An id that is not an identity, or a tenant
    /// without its `app_id`, fails the validation with
    /// [`Error::InvalidInput`](crate::Error::InvalidInput).
    pub tenant_id: Option<&'a str>,
    /// The credits the request costs a key that has credits (`None`: 1).
    pub cost: Option<u64>,
}

impl<'a> RequestContext<'a> {
    /// A context that knows nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// With the client's address.
    #[must_use]
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        self.ip = Some(ip);
        self
    }

    /// Accepting only keys of `tenant` (its app and tenant id).
    #[must_use]
    pub fn with_tenant(mut self, tenant: &'a crate::Tenant) -> Self {
        self.app_id = Some(&tenant.app_id);
        self.tenant_id = Some(&tenant.tenant_id);
        self
    }

    /// With the `Origin` header.
    #[must_use]
    pub fn with_origin(mut self, origin: &'a str) -> Self {
        self.origin = Some(origin);
        self
    }

    /// With method and path.
    #[must_use]
    pub fn with_request(mut self, method: &'a str, path: &'a str) -> Self {
        self.method = Some(method);
        self.path = Some(path);
        self
    }

    /// Requiring these scopes: `&["read:users"]`, a `&Vec<String>`, any
    /// slice of `&str` or `String`.
    #[must_use]
    pub fn with_required_scopes(mut self, scopes: impl Into<RequiredScopes<'a>>) -> Self {
        self.required_scopes = scopes.into();
        self
    }

    /// Accepting only keys of `app_id`.
    #[must_use]
    pub fn with_app_id(mut self, app_id: &'a str) -> Self {
        self.app_id = Some(app_id);
        self
    }

    /// Costing `cost` credits (instead of 1) to a key that has credits; a
    /// cost of `0` spends nothing and passes whatever is left.
    #[must_use]
    pub fn with_cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// What the request costs a key with credits.
    #[must_use]
    pub fn cost(&self) -> u64 {
        self.cost.unwrap_or(1)
    }
}

/// The scopes a request requires, borrowed as the caller holds them
/// (`&[&str]` or `&[String]`).
#[derive(Debug, Clone, Copy)]
pub enum RequiredScopes<'a> {
    /// Borrowed strings.
    Strs(&'a [&'a str]),
    /// Owned strings.
    Strings(&'a [String]),
}

impl Default for RequiredScopes<'_> {
    fn default() -> Self {
        Self::Strs(&[])
    }
}

impl RequiredScopes<'_> {
    /// The required scopes `granted` does not cover, in order.
    pub(super) fn missing_from<S: AsRef<str>>(self, granted: &[S]) -> Vec<String> {
        match self {
            Self::Strs(required) => scope::missing(granted, required),
            Self::Strings(required) => scope::missing(granted, required),
        }
    }
}

impl<'a> From<&'a [&'a str]> for RequiredScopes<'a> {
    fn from(scopes: &'a [&'a str]) -> Self {
        Self::Strs(scopes)
    }
}

impl<'a, const N: usize> From<&'a [&'a str; N]> for RequiredScopes<'a> {
    fn from(scopes: &'a [&'a str; N]) -> Self {
        Self::Strs(scopes)
    }
}

impl<'a> From<&'a Vec<&'a str>> for RequiredScopes<'a> {
    fn from(scopes: &'a Vec<&'a str>) -> Self {
        Self::Strs(scopes)
    }
}

impl<'a> From<&'a [String]> for RequiredScopes<'a> {
    fn from(scopes: &'a [String]) -> Self {
        Self::Strings(scopes)
    }
}

impl<'a, const N: usize> From<&'a [String; N]> for RequiredScopes<'a> {
    fn from(scopes: &'a [String; N]) -> Self {
        Self::Strings(scopes)
    }
}

impl<'a> From<&'a Vec<String>> for RequiredScopes<'a> {
    fn from(scopes: &'a Vec<String>) -> Self {
        Self::Strings(scopes)
    }
}
