//! The client address behind trusted proxies, from a peer and arbitrary
//! forwarding headers. Invariants: an address left of the first untrusted
//! hop is never the answer (the answer does not change whatever is
//! prepended); the peer is never the answer when it is a trusted proxy
//! that sent a header (the answer is the same from any trusted peer); an
//! unreadable header is an unknown client.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use keysmith_core::http::{ForwardingHeader, MAX_FORWARDING_HEADER_LEN, TrustedProxies};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    forwarded: bool,
    /// The peer: `10.a.b.c` (trusted) or `198.51.a.b` (not).
    peer: (bool, [u8; 3]),
    /// Whatever the client sent, as header lines.
    client_lines: Vec<Vec<u8>>,
    /// The entry the first proxy appended: the client's address or anything.
    hop: Hop,
    /// Trusted proxies appended after it.
    trusted_hops: Vec<(u8, [u8; 3])>,
}

#[derive(Debug, Arbitrary)]
enum Hop {
    V4([u8; 4]),
    V6([u16; 8]),
    Text(String),
}

fn proxies(forwarded: bool) -> TrustedProxies {
    let header = if forwarded { ForwardingHeader::Forwarded } else { ForwardingHeader::XForwardedFor };
    TrustedProxies::parse(["10.0.0.0/8", "2001:db8:ffff::/48"]).expect("networks").with_header(header)
}

fn element(forwarded: bool, node: &str) -> String {
    if forwarded { format!("for=\"{node}\"") } else { node.to_owned() }
}

/// How a trusted proxy may write an address.
fn written(style: u8, ip: IpAddr) -> String {
    match (style % 4, ip) {
        (1, _) => std::net::SocketAddr::new(ip, 443).to_string(),
        (2, IpAddr::V4(v4)) => v4.to_ipv6_mapped().to_string(),
        (3, IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => ip.to_string(),
    }
}

fuzz_target!(|input: Input| {
    let proxies = proxies(input.forwarded);
    let name = proxies.header().name();
    let (trusted_peer, [a, b, c]) = input.peer;
    let peer =
        if trusted_peer { IpAddr::V4(Ipv4Addr::new(10, a, b, c)) } else { IpAddr::V4(Ipv4Addr::new(198, 51, a, b)) };

    // Only what the client sent.
    let lines: Vec<(&str, &[u8])> = input.client_lines.iter().map(|line| (name, line.as_slice())).collect();
    let got = proxies.client_ip(Some(peer), &lines[..]);
    if !trusted_peer || lines.is_empty() {
        assert_eq!(got, Some(peer));
    } else {
        let texts: Option<Vec<&str>> = input.client_lines.iter().map(|l| std::str::from_utf8(l).ok()).collect();
        let total: usize = input.client_lines.iter().map(Vec::len).sum();
        match texts {
            Some(_) if total <= MAX_FORWARDING_HEADER_LEN => {
                // The answer comes from the header, not from which trusted
                // proxy sent it.
                let other_peer = IpAddr::V4(Ipv4Addr::new(10, a, b, c.wrapping_add(1)));
                assert_eq!(got, proxies.client_ip(Some(other_peer), &lines[..]), "the peer leaked into the answer");
            }
            _ => assert_eq!(got, None, "an unreadable header gave an address"),
        }
    }

    // What the client sent, then the first proxy's hop, then trusted hops.
    if !trusted_peer {
        return;
    }
    let hop = match &input.hop {
        Hop::V4(octets) => Ipv4Addr::from(*octets).to_string(),
        Hop::V6(segments) => Ipv6Addr::from(*segments).to_string(),
        Hop::Text(text) if !text.contains(',') => text.clone(),
        Hop::Text(_) => return,
    };
    let mut right = vec![element(input.forwarded, &hop)];
    for (style, [a, b, c]) in &input.trusted_hops {
        right.push(element(input.forwarded, &written(*style, IpAddr::V4(Ipv4Addr::new(10, *a, *b, *c)))));
    }
    let right = right.join(", ");
    // The hop alone: its address, unknown, or (a trusted hop) skipped.
    let alone = proxies.client_ip(Some(peer), &[(name, right.as_bytes())][..]);
    if alone.is_some_and(|ip| proxies.is_trusted(ip)) {
        return;
    }
    let mut lines = lines;
    lines.push((name, right.as_bytes()));
    let got = proxies.client_ip(Some(peer), &lines[..]);
    let readable = lines.iter().all(|(_, v)| std::str::from_utf8(v).is_ok())
        && lines.iter().map(|(_, v)| v.len()).sum::<usize>() <= MAX_FORWARDING_HEADER_LEN;
    if readable {
        assert_eq!(got, alone, "what the client prepended changed the answer");
        assert_ne!(got, Some(peer));
    } else {
        assert_eq!(got, None);
    }
});
