//! What the layer reads from an `http::Request`, and what it leaves in the
//! request's extensions for extractors and `RequireScopes`.

use std::net::IpAddr;

use http::{HeaderMap, Request};
use keysmith_core::http::{Gate, HeaderLookup};

use crate::RefusalResponder;

/// An `http::HeaderMap` as core reads headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Headers<'a>(pub(crate) &'a HeaderMap);

impl HeaderLookup for Headers<'_> {
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.0.get_all(name).into_iter().map(http::HeaderValue::as_bytes)
    }
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

/// Left in every request the layer lets through: proof that the layer ran,
/// and what extractors and `RequireScopes` need to answer like it would.
#[derive(Debug, Clone)]
pub(crate) struct Installed {
    pub(crate) gate: Gate,
    pub(crate) responder: RefusalResponder,
    /// The request is a CORS preflight let through without a key.
    pub(crate) preflight: bool,
}
