//! The shared values of a usage record: a request makes one record, and
//! the queue, the batch and the memory store hold copies of it, so its
//! text and its owner are shared (`&'static str` or `Arc`), never copied.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Key, Tenant};

/// Text of a usage record (method, endpoint, user agent): a string that
/// clones without copying. Reads as a `&str` (`Deref`, [`as_str`](Self::as_str)).
///
/// ```
/// use keysmith_core::usage::SharedStr;
///
/// let method = SharedStr::method("GET");
/// assert_eq!(method, "GET");
/// let path = SharedStr::copied("/users/7");
/// assert_eq!(path.as_str(), "/users/7");
/// ```
#[derive(Clone)]
pub struct SharedStr(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

/// The methods of RFC 9110 (and `PATCH`), whose records share one string.
const METHODS: [&str; 9] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE"];

impl SharedStr {
    /// A copy of `text` (one allocation, shared by every clone after it).
    #[must_use]
    pub fn copied(text: &str) -> Self {
        Self(Repr::Shared(Arc::from(text)))
    }

    /// An HTTP method: a standard one without allocating, another copied.
    #[must_use]
    pub fn method(method: &str) -> Self {
        match Self::method_code(method).and_then(Self::standard_method) {
            Some(standard) => Self(Repr::Static(standard)),
            None => Self::copied(method),
        }
    }

    /// The number of a standard method, which a queued usage entry
    /// carries instead of the text; `None` for another method.
    pub(crate) fn method_code(method: &str) -> Option<u8> {
        METHODS.iter().position(|m| *m == method).and_then(|code| u8::try_from(code).ok())
    }

    /// The standard method numbered `code`.
    pub(crate) fn standard_method(code: u8) -> Option<&'static str> {
        METHODS.get(usize::from(code)).copied()
    }

    /// The text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(text) => text,
            Repr::Shared(text) => text,
        }
    }
}

impl Default for SharedStr {
    fn default() -> Self {
        Self(Repr::Static(""))
    }
}

impl Deref for SharedStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for SharedStr {
    fn from(text: &'static str) -> Self {
        Self(Repr::Static(text))
    }
}

impl From<String> for SharedStr {
    fn from(text: String) -> Self {
        Self(Repr::Shared(Arc::from(text)))
    }
}

impl From<Arc<str>> for SharedStr {
    fn from(text: Arc<str>) -> Self {
        Self(Repr::Shared(text))
    }
}

impl From<SharedStr> for String {
    fn from(text: SharedStr) -> Self {
        text.as_str().to_owned()
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for SharedStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

/// The owner of a usage record: the [`Tenant`] of the key that made it,
/// shared with the key (a record of a validated request holds the key's
/// `Arc`, not a copy of its two strings). Reads as a `&Tenant` (`Deref`).
///
/// ```
/// use keysmith_core::Tenant;
/// use keysmith_core::usage::SharedTenant;
///
/// let owner = SharedTenant::from(Tenant::new("app", "acme"));
/// assert_eq!(owner.app_id, "app");
/// assert_eq!(*owner, Tenant::new("app", "acme"));
/// ```
#[derive(Clone)]
pub struct SharedTenant(Owner);

#[derive(Clone)]
enum Owner {
    Key(Arc<Key>),
    Tenant(Arc<Tenant>),
}

impl SharedTenant {
    /// The tenant of `key`, sharing the key.
    #[must_use]
    pub fn of_key(key: &Arc<Key>) -> Self {
        Self(Owner::Key(Arc::clone(key)))
    }

    /// The tenant.
    #[must_use]
    pub fn tenant(&self) -> &Tenant {
        match &self.0 {
            Owner::Key(key) => &key.tenant,
            Owner::Tenant(tenant) => tenant,
        }
    }
}

impl Deref for SharedTenant {
    type Target = Tenant;

    fn deref(&self) -> &Tenant {
        self.tenant()
    }
}

impl AsRef<Tenant> for SharedTenant {
    fn as_ref(&self) -> &Tenant {
        self.tenant()
    }
}

impl Borrow<Tenant> for SharedTenant {
    fn borrow(&self) -> &Tenant {
        self.tenant()
    }
}

impl From<Tenant> for SharedTenant {
    fn from(tenant: Tenant) -> Self {
        Self(Owner::Tenant(Arc::new(tenant)))
    }
}

impl From<&Tenant> for SharedTenant {
    fn from(tenant: &Tenant) -> Self {
        Self::from(tenant.clone())
    }
}

impl From<&Arc<Key>> for SharedTenant {
    fn from(key: &Arc<Key>) -> Self {
        Self::of_key(key)
    }
}

impl PartialEq for SharedTenant {
    fn eq(&self, other: &Self) -> bool {
        self.tenant() == other.tenant()
    }
}

impl Eq for SharedTenant {}

impl PartialEq<Tenant> for SharedTenant {
    fn eq(&self, other: &Tenant) -> bool {
        self.tenant() == other
    }
}

impl Hash for SharedTenant {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tenant().hash(state);
    }
}

impl fmt::Debug for SharedTenant {
    /// The tenant only (never the key it is shared with).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.tenant(), f)
    }
}

impl fmt::Display for SharedTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.tenant(), f)
    }
}

impl Serialize for SharedTenant {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.tenant().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedTenant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Tenant::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_are_shared_and_others_copied() {
        assert!(matches!(SharedStr::method("DELETE").0, Repr::Static(_)));
        assert!(matches!(SharedStr::method("PROPFIND").0, Repr::Shared(_)));
        assert_eq!(SharedStr::method("PROPFIND"), "PROPFIND");
        // Methods are case-sensitive: `get` is not `GET`.
        assert_eq!(SharedStr::method("get"), "get");
    }

    #[test]
    fn shared_values_serialize_as_their_text_and_tenant() {
        let json = serde_json::to_string(&(SharedStr::copied("/x"), SharedTenant::from(Tenant::new("a", "t"))));
        assert_eq!(json.unwrap(), r#"["/x",{"app_id":"a","tenant_id":"t"}]"#);
        let (text, owner): (SharedStr, SharedTenant) =
            serde_json::from_str(r#"["/x",{"app_id":"a","tenant_id":"t"}]"#).unwrap();
        assert_eq!((text.as_str(), owner.tenant()), ("/x", &Tenant::new("a", "t")));
    }
}
