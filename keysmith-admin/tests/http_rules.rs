//! The admin router's HTTP edges: CORS preflights and the client address
//! of its keys' IP allowlists.

mod support;

use axum::body::Body;
use axum::http::Request;
use keysmith_admin::AdminConfig;
use keysmith_core::NewKey;
use keysmith_core::PolicySpec;
use keysmith_core::http::{ForwardingHeader, TrustedProxies};
use keysmith_tower::ApiKeyLayer;
use support::{MOUNT, harness_with, with_config};

fn preflight(path: &str) -> Request<Body> {
    Request::options(format!("{MOUNT}{path}"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "DELETE")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn preflights_never_pass_the_admin_router_even_from_a_passthrough_layer() {
    let h = harness_with(
        |engine| AdminConfig::from_layer(ApiKeyLayer::new(engine).with_preflight_passthrough(true)).into_router(),
        false,
    )
    .await;
    // Known and unknown paths answer alike: nothing says which routes exist.
    for path in ["/keys", "/keys/akey_01h455vb4pex5vsknk084sn02q", "/no-such-route", "/openapi.json"] {
        h.raw(preflight(path)).await.assert_error(401, "missing_key");
    }
    let default = harness_with(|engine| AdminConfig::new(engine).into_router(), false).await;
    default.raw(preflight("/keys")).await.assert_error(401, "missing_key");
}

#[tokio::test]
async fn the_configured_forwarding_header_decides_the_admin_client_address() {
    let proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap().with_header(ForwardingHeader::Forwarded);
    let h = harness_with(with_config(move |config| config.with_trusted_proxies(proxies)), false).await;
    let office =
        h.tenant().create_policy(PolicySpec::new("office").with_allowed_ips(["203.0.113.0/24"])).await.unwrap();
    let key =
        h.tenant().create_key(NewKey::new("ops").with_scopes(["keysmith:admin"]).with_policy(office.id)).await.unwrap();
    let request = |name: &str, value: &str| {
        let mut request = Request::get(format!("{MOUNT}/scopes"))
            .header("authorization", format!("Bearer {}", key.raw.expose()))
            .header(name, value)
            .body(Body::empty())
            .unwrap();
        let peer: std::net::SocketAddr = "10.0.0.1:40000".parse().unwrap();
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        request
    };
    assert_eq!(h.raw(request("forwarded", "for=203.0.113.5")).await.status, 200);
    // The proxy writes `Forwarded`: an `X-Forwarded-For` is the client's own.
    h.raw(request("x-forwarded-for", "203.0.113.5")).await.assert_error(403, "ip_not_allowed");
    h.raw(request("forwarded", "for=203.0.113.5, for=unknown")).await.assert_error(403, "ip_not_allowed");
}
