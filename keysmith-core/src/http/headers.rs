//! Reading request headers without knowing the framework's header type.

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

    /// The names read or written on every request (the default key
    /// sources, client address, origin, user agent, preflight marker and
    /// the `RateLimit-*` headers of a passed request). An adapter builds its
    /// framework's header names from this list once and finds them with
    /// [`per_request_index`], instead of parsing a name per request.
    pub const PER_REQUEST: [&str; 10] = [
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
    ];

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
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{HeaderLookup, names};

    #[test]
    fn every_per_request_name_is_found_where_it_stands() {
        for (index, name) in names::PER_REQUEST.iter().enumerate() {
            assert_eq!(names::per_request_index(name), Some(index), "{name}");
        }
        assert_eq!(names::per_request_index("x-token"), None);
        assert_eq!(names::per_request_index("X-API-Key"), None, "names are looked up in lowercase");
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
