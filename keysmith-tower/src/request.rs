//! What the layer reads from an `http::Request`, and what it leaves in the
//! request's extensions for extractors and `RequireScopes`.

use std::cell::OnceCell;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request};
use keysmith_core::http::names::{FrameworkNames, Known};
use keysmith_core::http::{ApiKey as CoreApiKey, Gate, HeaderLookup};

use crate::RefusalResponder;

/// An `http::HeaderMap` as core reads headers. The four headers core reads
/// on every request (the two key headers, `User-Agent` and `Origin`) are
/// found in one pass over a map of a request's usual size, the first time
/// core asks for one of them, rather than by four hashed lookups; a larger
/// map, a header sent more than once and every other header are looked up.
#[allow(unreachable_pub, reason = "named only through the glue's `Adapter` impl")]
pub struct Headers<'a> {
    map: &'a HeaderMap,
    scanned: OnceCell<Scanned<'a>>,
}

/// The headers of [`SCANNED`] in a request: each one's first value, and
/// which of them came more than once.
#[derive(Clone, Copy)]
struct Scanned<'a> {
    first: [Option<&'a HeaderValue>; SCANNED.len()],
    /// Bit `i`: `SCANNED[i]` has more than one value.
    repeated: u8,
}

/// The headers read on every request, at their places in
/// `names::PER_REQUEST` (the first four).
const SCANNED: [Known; 4] = [Known::AUTHORIZATION, Known::X_API_KEY, Known::USER_AGENT, Known::ORIGIN];

/// The largest map read in one pass (a request's values, all names).
const SCAN_MAX: usize = 24;

impl<'a> Headers<'a> {
    pub(crate) fn new(map: &'a HeaderMap) -> Self {
        Self { map, scanned: OnceCell::new() }
    }

    /// The scanned headers, or `None` for a map too large to pass over.
    fn scanned(&self) -> Option<&Scanned<'a>> {
        if self.map.len() > SCAN_MAX {
            return None;
        }
        Some(self.scanned.get_or_init(|| {
            let mut scanned = Scanned { first: [None; SCANNED.len()], repeated: 0 };
            for (name, value) in self.map {
                if let Some(i) = SCANNED.iter().position(|known| KNOWN.get(*known) == name) {
                    match scanned.first[i] {
                        None => scanned.first[i] = Some(value),
                        Some(_) => scanned.repeated |= 1 << i,
                    }
                }
            }
            scanned
        }))
    }

    /// The value of `name` when the pass answers for it: it was scanned and
    /// came at most once.
    fn single(&self, name: Known) -> Option<Option<&'a HeaderValue>> {
        let scanned = self.scanned()?;
        let i = SCANNED.iter().position(|known| *known == name)?;
        (scanned.repeated & (1 << i) == 0).then_some(scanned.first[i])
    }
}

impl std::fmt::Debug for Headers<'_> {
    /// The names only: the values hold the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

impl HeaderLookup for Headers<'_> {
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        let values = match known_name(name) {
            Some(name) => self.map.get_all(name),
            None => self.map.get_all(name),
        };
        values.into_iter().map(http::HeaderValue::as_bytes)
    }

    /// The first value by `get`, which finds it without the iterator
    /// over every value (the user agent and origin of every request).
    fn first_header<'a>(&'a self, name: &str) -> Option<&'a [u8]> {
        let value = match known_name(name) {
            Some(name) => self.map.get(name),
            None => self.map.get(name),
        };
        value.map(http::HeaderValue::as_bytes)
    }

    fn known_values(&self, name: Known) -> impl Iterator<Item = &[u8]> {
        match self.single(name) {
            Some(value) => Values::One(value.map(HeaderValue::as_bytes)),
            None => Values::All(self.map.get_all(KNOWN.get(name)).iter()),
        }
    }

    fn first_known(&self, name: Known) -> Option<&[u8]> {
        match self.single(name) {
            Some(value) => value,
            None => self.map.get(KNOWN.get(name)),
        }
        .map(HeaderValue::as_bytes)
    }
}

/// The values of a header: the one the pass found, or all of them.
enum Values<'a> {
    One(Option<&'a [u8]>),
    All(http::header::ValueIter<'a, HeaderValue>),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Self::One(value) => value.take(),
            Self::All(values) => values.next().map(HeaderValue::as_bytes),
        }
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
        let headers = Headers::new(&map);
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

    /// A header as read: every value, and the first one.
    type Read = (Vec<Vec<u8>>, Option<Vec<u8>>);

    /// Every per-request header, read by name, as `get_all` and `get` read it.
    fn by_lookup(map: &HeaderMap) -> Vec<Read> {
        names::PER_REQUEST[..7]
            .iter()
            .map(|name| {
                let all = map.get_all(*name).iter().map(|v| v.as_bytes().to_vec()).collect();
                (all, map.get(*name).map(|v| v.as_bytes().to_vec()))
            })
            .collect()
    }

    /// The same headers read by their place, as core reads them.
    fn by_place(headers: &Headers<'_>) -> Vec<Read> {
        let known = [
            Known::AUTHORIZATION,
            Known::X_API_KEY,
            Known::USER_AGENT,
            Known::ORIGIN,
            Known::X_FORWARDED_FOR,
            Known::FORWARDED,
            Known::ACCESS_CONTROL_REQUEST_METHOD,
        ];
        known
            .iter()
            .map(|name| {
                let all = headers.known_values(*name).map(<[u8]>::to_vec).collect();
                (all, headers.first_known(*name).map(<[u8]>::to_vec))
            })
            .collect()
    }

    #[test]
    fn the_single_pass_reads_what_lookups_read_at_every_size_and_repetition() {
        // Small maps are read in one pass, large ones looked up: both must
        // answer every header, once or repeated, present or not, alike.
        for filler in [0, 3, SCAN_MAX - 4, SCAN_MAX, SCAN_MAX + 5] {
            for repeated in [false, true] {
                let mut map = HeaderMap::new();
                map.append("host", HeaderValue::from_static("example.com"));
                map.append("x-api-key", HeaderValue::from_static("sk_live_first"));
                for i in 0..filler {
                    map.append(
                        HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                        HeaderValue::from(i),
                    );
                }
                map.append("User-Agent", HeaderValue::from_static("curl/8"));
                map.append("authorization", HeaderValue::from_static("Bearer sk_live_bearer"));
                if repeated {
                    map.append("x-api-key", HeaderValue::from_static("sk_live_second"));
                    map.append("origin", HeaderValue::from_static("https://a.example"));
                    map.append("origin", HeaderValue::from_static("https://b.example"));
                }
                map.append("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
                let headers = Headers::new(&map);
                assert_eq!(by_place(&headers), by_lookup(&map), "{filler} fillers, repeated: {repeated}");
                let keys: Vec<&[u8]> = headers.known_values(Known::X_API_KEY).collect();
                let expected: &[&[u8]] =
                    if repeated { &[b"sk_live_first", b"sk_live_second"] } else { &[b"sk_live_first"] };
                assert_eq!(keys, expected);
            }
        }
    }

    #[test]
    fn debug_shows_header_names_never_their_values() {
        let mut map = HeaderMap::new();
        map.append("x-api-key", HeaderValue::from_static("sk_live_secret"));
        let shown = format!("{:?}", Headers::new(&map));
        assert!(shown.contains("x-api-key") && !shown.contains("secret"), "{shown}");
    }
}
