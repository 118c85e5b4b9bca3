//! What the middleware reads from a request, and what it leaves in the
//! request's extensions for extractors and `RequireScopes`.

use std::rc::Rc;

use actix_web::http::header::{HeaderMap, HeaderName};
use keysmith_core::http::names::{FrameworkNames, Known};
use keysmith_core::http::{ApiKey as CoreApiKey, Gate, HeaderLookup};

use crate::RefusalResponder;
use crate::routes::StaticRoutes;

/// actix's `HeaderMap` as core reads headers.
#[derive(Clone, Copy)]
#[allow(unreachable_pub, reason = "named only through the glue's `Adapter` impl")]
pub struct Headers<'a>(pub(crate) &'a HeaderMap);

impl std::fmt::Debug for Headers<'_> {
    /// The names only: the values hold the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl HeaderLookup for Headers<'_> {
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        let values = match known_name(name) {
            Some(name) => self.0.get_all(name),
            None => self.0.get_all(name),
        };
        values.map(actix_web::http::header::HeaderValue::as_bytes)
    }

    fn known_values(&self, name: Known) -> impl Iterator<Item = &[u8]> {
        self.0.get_all(KNOWN.get(name)).map(actix_web::http::header::HeaderValue::as_bytes)
    }

    fn first_known(&self, name: Known) -> Option<&[u8]> {
        self.0.get(KNOWN.get(name)).map(actix_web::http::header::HeaderValue::as_bytes)
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

/// What the middleware shares with every request it lets through.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) gate: Gate,
    pub(crate) responder: RefusalResponder,
    /// The templates of this application's routes without parameters.
    pub(crate) routes: StaticRoutes,
}

/// Left in every request the middleware lets through, the one extension
/// value it inserts: the validated key (if any), proof that it ran, and
/// what extractors and `RequireScopes` need to answer like it would.
#[derive(Debug, Clone)]
pub(crate) struct Installed {
    /// The key the request passed with; `None` in optional mode without a
    /// key and for a CORS preflight let through.
    pub(crate) key: Option<CoreApiKey>,
    /// Gate and responder behind one `Rc` (the middleware lives on one
    /// worker thread): no atomic reference count to bump per request.
    pub(crate) shared: Rc<Shared>,
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
    use actix_web::http::header::HeaderValue;

    use keysmith_core::http::names;

    use super::*;

    #[test]
    fn debug_shows_header_names_never_their_values() {
        let mut map = HeaderMap::new();
        map.append(HeaderName::from_static("x-api-key"), HeaderValue::from_static("sk_live_secret"));
        let shown = format!("{:?}", Headers(&map));
        assert!(shown.contains("x-api-key") && !shown.contains("secret"), "{shown}");
    }

    #[test]
    fn every_value_of_a_header_is_read_in_order_whatever_its_case() {
        let mut map = HeaderMap::new();
        let name = HeaderName::from_static("x-api-key");
        map.append(name.clone(), HeaderValue::from_static("k1"));
        map.append(name, HeaderValue::from_bytes(b"k\xff").unwrap());
        let headers = Headers(&map);
        let values: Vec<&[u8]> = headers.header_values("X-API-Key").collect();
        assert_eq!(values, [b"k1".as_slice(), b"k\xff".as_slice()]);
        let values: Vec<&[u8]> = headers.header_values(names::X_API_KEY).collect();
        assert_eq!(values, [b"k1".as_slice(), b"k\xff".as_slice()]);
        assert_eq!(headers.first_header("authorization"), None);
        let values: Vec<&[u8]> = headers.known_values(Known::X_API_KEY).collect();
        assert_eq!(values, [b"k1".as_slice(), b"k\xff".as_slice()]);
        assert_eq!(headers.first_known(Known::X_API_KEY), Some(b"k1".as_slice()));
        assert_eq!(headers.first_known(Known::AUTHORIZATION), None);
    }
}
