//! What the layer reads from an `http::Request`, and what it leaves in the
//! request's extensions for extractors and `RequireScopes`.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderMap, Request};
use keysmith_core::http::names::{FrameworkNames, Known};
use keysmith_core::http::{ApiKey as CoreApiKey, Gate, HeaderLookup};

use crate::RefusalResponder;

/// An `http::HeaderMap` as core reads headers.
#[derive(Debug, Clone, Copy)]
#[allow(unreachable_pub, reason = "named only through the glue's `Adapter` impl")]
pub struct Headers<'a>(pub(crate) &'a HeaderMap);

impl HeaderLookup for Headers<'_> {
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        let values = match known_name(name) {
            Some(name) => self.0.get_all(name),
            None => self.0.get_all(name),
        };
        values.into_iter().map(http::HeaderValue::as_bytes)
    }

    /// The first value by `get`, which finds it without the iterator
    /// over every value (the user agent and origin of every request).
    fn first_header<'a>(&'a self, name: &str) -> Option<&'a [u8]> {
        let value = match known_name(name) {
            Some(name) => self.0.get(name),
            None => self.0.get(name),
        };
        value.map(http::HeaderValue::as_bytes)
    }

    fn known_values(&self, name: Known) -> impl Iterator<Item = &[u8]> {
        self.0.get_all(KNOWN.get(name)).into_iter().map(http::HeaderValue::as_bytes)
    }

    fn first_known(&self, name: Known) -> Option<&[u8]> {
        self.0.get(KNOWN.get(name)).map(http::HeaderValue::as_bytes)
    }
}

/// Core's per-request header names as this framework's names, parsed
/// once: a lookup or insert by `&str` parses (and validates) the name each
/// time.
static KNOWN: FrameworkNames<HeaderName> = FrameworkNames::new(HeaderName::from_static);

/// This framework's name of `name`, if it is a per-request header.
pub(crate) fn known_name(name: &str) -> Option<&'static HeaderName> {
    KNOWN.of(name)
}

/// The peer address: axum's `ConnectInfo<SocketAddr>`, when the server was
/// started with `into_make_service_with_connect_info::<SocketAddr>()`.
pub(crate) fn peer<B>(request: &Request<B>) -> Option<IpAddr> {
    #[cfg(feature = "axum")]
    {
        use axum::extract::ConnectInfo;
        request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip())
    }
    #[cfg(not(feature = "axum"))]
    {
        let _ = request;
        None
    }
}

/// The route template the request matched: axum's `MatchedPath`, which the
/// `Router` sets before the layers added with `Router::layer` or
/// `route_layer` run. `None` when no route matched, and for a layer
/// wrapped around a whole `Router` (or around `nest`): it runs before the
/// router has matched anything.
pub(crate) fn matched_route<B>(request: &Request<B>) -> Option<&str> {
    #[cfg(feature = "axum")]
    {
        use axum::extract::MatchedPath;
        request.extensions().get::<MatchedPath>().map(MatchedPath::as_str)
    }
    #[cfg(not(feature = "axum"))]
    {
        let _ = request;
        None
    }
}

/// What the layer's service shares with every request it lets through.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) gate: Gate,
    pub(crate) responder: RefusalResponder,
}

/// Left in every request the layer lets through, the one extension value
/// it inserts: the validated key (if any), proof that the layer ran, and
/// what extractors and `RequireScopes` need to answer like it would.
#[derive(Debug, Clone)]
pub(crate) struct Installed {
    /// The key the request passed with; `None` in optional mode without a
    /// key and for a CORS preflight let through.
    pub(crate) key: Option<CoreApiKey>,
    /// Gate and responder behind one `Arc`: one reference count to bump
    /// per request rather than two.
    pub(crate) shared: Arc<Shared>,
    /// The request is a CORS preflight let through without a key.
    pub(crate) preflight: bool,
}

impl Installed {
    pub(crate) fn gate(&self) -> &Gate {
        &self.shared.gate
    }

    pub(crate) fn responder(&self) -> &RefusalResponder {
        &self.shared.responder
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use keysmith_core::http::names;

    use super::*;

    #[test]
    fn known_and_other_names_read_every_value_in_order_whatever_their_case() {
        let mut map = HeaderMap::new();
        map.append("x-api-key", HeaderValue::from_static("k1"));
        map.append(HeaderName::from_bytes(b"X-API-Key").unwrap(), HeaderValue::from_bytes(b"k\xff").unwrap());
        map.append("x-token", HeaderValue::from_static("t"));
        let headers = Headers(&map);
        let values: Vec<&[u8]> = headers.header_values(names::X_API_KEY).collect();
        assert_eq!(values, [b"k1".as_slice(), b"k\xff".as_slice()]);
        assert_eq!(headers.first_header("x-token"), Some(b"t".as_slice()));
        assert_eq!(headers.first_header("X-Token"), Some(b"t".as_slice()));
        assert_eq!(headers.first_header(names::AUTHORIZATION), None);
        let values: Vec<&[u8]> = headers.known_values(Known::X_API_KEY).collect();
        assert_eq!(values, [b"k1".as_slice(), b"k\xff".as_slice()]);
        assert_eq!(headers.first_known(Known::X_API_KEY), Some(b"k1".as_slice()));
        assert_eq!(headers.first_known(Known::AUTHORIZATION), None);
    }
}
