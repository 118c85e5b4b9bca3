//! What the middleware reads from a request, and what it leaves in the
//! request's extensions for extractors and `RequireScopes`.

use actix_web::http::header::HeaderMap;
use keysmith_core::http::{Gate, HeaderLookup};

use crate::RefusalResponder;

/// actix's `HeaderMap` as core reads headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Headers<'a>(pub(crate) &'a HeaderMap);

impl HeaderLookup for Headers<'_> {
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.0.get_all(name).map(actix_web::http::header::HeaderValue::as_bytes)
    }
}

/// Left in every request the middleware lets through: proof that it ran,
/// and what extractors and `RequireScopes` need to answer like it would.
#[derive(Debug, Clone)]
pub(crate) struct Installed {
    pub(crate) gate: Gate,
    pub(crate) responder: RefusalResponder,
    /// The request is a CORS preflight let through without a key.
    pub(crate) preflight: bool,
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    #[test]
    fn every_value_of_a_header_is_read_in_order_whatever_its_case() {
        let mut map = HeaderMap::new();
        let name = HeaderName::from_static("x-api-key");
        map.append(name.clone(), HeaderValue::from_static("k1"));
        map.append(name, HeaderValue::from_bytes(b"k\xff").unwrap());
        let headers = Headers(&map);
        let values: Vec<&[u8]> = headers.header_values("X-API-Key").collect();
        assert_eq!(values, [b"k1".as_slice(), b"k\xff".as_slice()]);
        assert_eq!(headers.first_header("authorization"), None);
    }
}
