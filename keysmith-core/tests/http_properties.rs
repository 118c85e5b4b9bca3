//! Properties of the HTTP rules an attacker controls the input of: the
//! client address behind trusted proxies, key extraction from headers, and
//! key parsing. The `fuzz/` targets check the same invariants on raw bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, LazyLock};

use keysmith_core::http::{
    ForwardingHeader, KeySources, MAX_FORWARDING_HEADER_LEN, MAX_KEY_HEADER_LEN, TrustedProxies,
};
use keysmith_core::{Engine, MAX_RAW_KEY_LEN, MemoryStore, NewKey, ParsedKey, Refusal};
use proptest::prelude::*;

fn proxies(header: ForwardingHeader) -> TrustedProxies {
    TrustedProxies::parse(["10.0.0.0/8", "2001:db8:ffff::/48"]).unwrap().with_header(header)
}

fn any_header() -> impl Strategy<Value = ForwardingHeader> {
    prop_oneof![Just(ForwardingHeader::XForwardedFor), Just(ForwardingHeader::Forwarded)]
}

fn trusted_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::V4(Ipv4Addr::new(10, a, b, c))),
        any::<[u16; 5]>().prop_map(|[a, b, c, d, e]| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, a, b, c, d, e))),
    ]
}

fn untrusted_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (11u8..=223, any::<[u8; 3]>()).prop_map(|(a, [b, c, d])| IpAddr::V4(Ipv4Addr::new(a, b, c, d))),
        any::<[u16; 6]>().prop_map(|[a, b, c, d, e, f]| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, a, b, c, d, e | f))),
    ]
}

/// An address as some proxy may write it: bare, with a port, bracketed,
/// quoted, or IPv4-mapped.
fn written(ip: IpAddr, style: u8) -> String {
    match (style % 5, ip) {
        (1, _) => format!("{}", std::net::SocketAddr::new(ip, 8080)),
        (2, IpAddr::V6(v6)) => format!("[{v6}]"),
        (3, _) => format!("\"{ip}\""),
        (4, IpAddr::V4(v4)) => v4.to_ipv6_mapped().to_string(),
        _ => ip.to_string(),
    }
}

/// One element of the header, holding `node` as its address.
fn element(header: ForwardingHeader, node: &str) -> String {
    match header {
        ForwardingHeader::XForwardedFor => node.to_owned(),
        _ => format!("for={node};proto=https"),
    }
}

/// The entry next to the trusted hops: an untrusted address (the client),
/// or something that is not an address (the client is unknown).
#[derive(Debug, Clone)]
enum Hop {
    Address(IpAddr, u8),
    Junk(&'static str),
}

fn hop() -> impl Strategy<Value = Hop> {
    prop_oneof![
        (untrusted_ip(), any::<u8>()).prop_map(|(ip, style)| Hop::Address(ip, style)),
        prop::sample::select(vec!["unknown", "_hidden", "", " ", "unix:/run/a.sock", "10.0.0.1.5", "[::1", "x:1"])
            .prop_map(Hop::Junk),
    ]
}

impl Hop {
    fn node(&self) -> String {
        match self {
            Self::Address(ip, style) => written(*ip, *style),
            Self::Junk(text) => (*text).to_owned(),
        }
    }

    fn client(&self) -> Option<IpAddr> {
        match self {
            Self::Address(ip, _) => Some(*ip),
            Self::Junk(_) => None,
        }
    }
}

/// Whatever a client prepends: commas, addresses, quotes, anything.
fn spoofed_left() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,64}",
        prop::collection::vec(any::<Ipv4Addr>(), 0..6).prop_map(|ips| ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Left of the first untrusted hop, nothing is ever the answer; the
    /// answer is that hop's address or unknown, never the trusted peer.
    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right_or_unknown(
        header in any_header(),
        peer in trusted_ip(),
        left in spoofed_left(),
        client in hop(),
        trusted in prop::collection::vec((trusted_ip(), any::<u8>()), 0..4),
        split_lines in any::<bool>(),
    ) {
        let proxies = proxies(header);
        let mut right = vec![element(header, &client.node())];
        right.extend(trusted.iter().map(|(ip, style)| element(header, &written(*ip, *style))));
        let right = right.join(", ");
        let lines = if split_lines { vec![left.clone(), right.clone()] } else { vec![format!("{left},{right}")] };
        let headers: Vec<(&str, &str)> = lines.iter().map(|line| (header.name(), line.as_str())).collect();

        let got = proxies.client_ip(Some(peer), &headers[..]);
        prop_assert_eq!(got, client.client());
        prop_assert_ne!(got, Some(peer));
        // The same without anything on the left: the left changes nothing.
        let alone = [(header.name(), right.as_str())];
        prop_assert_eq!(proxies.client_ip(Some(peer), &alone[..]), got);
    }

    /// The peer is the client when it is not a trusted proxy, whatever the
    /// forwarding headers say.
    #[test]
    fn an_untrusted_peer_is_the_client_whatever_the_headers_say(
        header in any_header(),
        peer in untrusted_ip(),
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4),
    ) {
        let headers: Vec<(&str, &[u8])> = values
            .iter()
            .flat_map(|value| [("x-forwarded-for", value.as_slice()), ("forwarded", value.as_slice())])
            .collect();
        prop_assert_eq!(proxies(header).client_ip(Some(peer), &headers[..]), Some(peer));
    }

    /// Arbitrary bytes from a trusted proxy: an unreadable header is an
    /// unknown client, and the answer to a readable one is the same from
    /// any trusted peer (the peer never leaks into it).
    #[test]
    fn arbitrary_bytes_from_a_trusted_proxy_never_make_the_peer_the_client(
        header in any_header(),
        peer in trusted_ip(),
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 1..4),
        padding in prop::option::of(MAX_FORWARDING_HEADER_LEN..MAX_FORWARDING_HEADER_LEN + 64),
    ) {
        let mut values = values;
        if let Some(len) = padding {
            values[0].resize(len, b' ');
        }
        let headers: Vec<(&str, &[u8])> = values.iter().map(|value| (header.name(), value.as_slice())).collect();
        let got = proxies(header).client_ip(Some(peer), &headers[..]);
        let texts: Option<Vec<&str>> = values.iter().map(|value| std::str::from_utf8(value).ok()).collect();
        let total: usize = values.iter().map(Vec::len).sum();
        match texts {
            None => prop_assert_eq!(got, None, "not UTF-8"),
            Some(_) if total > MAX_FORWARDING_HEADER_LEN => prop_assert_eq!(got, None, "over the cap"),
            Some(_) => {
                // The answer comes from the header, not from which trusted
                // proxy sent it.
                let other_peer: IpAddr = "10.200.0.1".parse().unwrap();
                prop_assume!(other_peer != peer);
                prop_assert_eq!(got, proxies(header).client_ip(Some(other_peer), &headers[..]));
            }
        }
    }

    /// Another scheme's `Authorization` never hides or spoils the key in
    /// `X-API-Key`, whatever its length or bytes.
    #[test]
    fn another_authorization_scheme_is_ignored_whatever_it_carries(
        scheme in prop::sample::select(vec!["Negotiate", "Basic", "Digest", "NTLM", "bearerx", "Token"]),
        credential in prop::collection::vec(any::<u8>(), 0..4 * MAX_KEY_HEADER_LEN),
        key in "[A-Za-z0-9_]{1,64}",
    ) {
        let mut value = format!("{scheme} ").into_bytes();
        value.extend(credential);
        let headers: [(&str, &[u8]); 2] = [("authorization", &value), ("x-api-key", key.as_bytes())];
        prop_assert_eq!(KeySources::default().extract(&headers[..]), Ok(key.as_str()));
        prop_assert_eq!(KeySources::default().extract(&headers[..1]), Err(Refusal::MissingKey));
    }

    /// Whatever the headers, an extracted key is short, not empty, and
    /// taken from one of the configured headers.
    #[test]
    fn an_extracted_key_is_short_and_comes_from_a_key_header(
        headers in prop::collection::vec(
            (
                prop::sample::select(vec!["authorization", "x-api-key", "X-Api-Key", "cookie", "x-token"]),
                prop::collection::vec(any::<u8>(), 0..2 * MAX_KEY_HEADER_LEN),
            ),
            0..5,
        ),
    ) {
        let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(name, value)| (*name, value.as_slice())).collect();
        if let Ok(key) = KeySources::default().extract(&pairs[..]) {
            prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_HEADER_LEN);
            let from_key_header = pairs.iter().any(|(name, value)| {
                !name.eq_ignore_ascii_case("cookie")
                    && !name.eq_ignore_ascii_case("x-token")
                    && value.windows(key.len()).any(|window| window == key.as_bytes())
            });
            prop_assert!(from_key_header, "{:?}", key);
        }
    }
}

/// A key made by the engine, to mutate.
static KEY: LazyLock<String> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let engine = Engine::builder(Arc::new(MemoryStore::new())).build().unwrap();
        engine.tenant("app", "acme").create_key(NewKey::new("k")).await.unwrap().raw.expose().to_owned()
    })
});

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Parsing never panics, and whatever parses is short and shaped like a
    /// key.
    #[test]
    fn whatever_parses_as_a_key_is_short_and_shaped_like_one(raw in "\\PC{0,160}|[a-z]{1,4}_(live|test|dev)_[A-Za-z0-9]{38}") {
        if let Some(parsed) = ParsedKey::parse(&raw) {
            prop_assert!(raw.len() <= MAX_RAW_KEY_LEN);
            let head = format!("{}_{}_", parsed.prefix, parsed.environment.as_str());
            prop_assert!(raw.starts_with(&head), "{:?}", raw);
        }
    }

    /// One changed character in a real key is caught by its checksum.
    #[test]
    fn a_key_with_one_character_changed_does_not_parse(index in 0usize..64, replacement in "[A-Za-z0-9_]") {
        let key = KEY.as_str();
        prop_assert!(ParsedKey::parse(key).is_some());
        let index = index % key.len();
        prop_assume!(key[index..=index] != replacement);
        let changed = format!("{}{}{}", &key[..index], replacement, &key[index + 1..]);
        prop_assert!(ParsedKey::parse(&changed).is_none(), "{}", changed);
    }

    /// A real key cut short or lengthened does not parse.
    #[test]
    fn a_truncated_or_extended_key_does_not_parse(cut in 1usize..40, extra in "[A-Za-z0-9]{1,8}") {
        let key = KEY.as_str();
        prop_assert!(ParsedKey::parse(&key[..key.len() - cut]).is_none());
        let extended = format!("{key}{extra}");
        prop_assert!(ParsedKey::parse(&extended).is_none(), "{:?}", extended);
    }
}
