//! Addresses and networks in one canonical form, so that an IPv4 client
//! matches its network however either was written: an IPv4-mapped IPv6
//! address (`::ffff:192.0.2.1`) is its IPv4 address, and a network inside
//! `::ffff:0:0/96` (`::ffff:192.0.2.0/120`) is its IPv4 network
//! (`192.0.2.0/24`).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// Length of the `::ffff:0:0/96` prefix that maps IPv4 into IPv6.
const MAPPED_PREFIX_LEN: u8 = 96;

/// `net` with its host bits cleared and, if it lies inside
/// `::ffff:0:0/96`, as the IPv4 network it maps. A wider IPv6 network
/// (`::/0`, `::ffff:0:0/80`) stays IPv6 and matches IPv6 clients only.
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    let IpNet::V6(v6) = net else { return net };
    let Some(v4) = v6.addr().to_ipv4_mapped() else { return net };
    let Some(len) = v6.prefix_len().checked_sub(MAPPED_PREFIX_LEN) else { return net };
    Ipv4Net::new(v4, len).map_or(net, IpNet::V4)
}

/// A network (`10.0.0.0/8`) or a single address (`10.0.0.1`, a host
/// network), canonical; `None` if `text` (trimmed) is neither.
pub(crate) fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    let net = text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from)).ok()?;
    Some(canonical_net(net))
}

/// True if the canonical `ip` is inside `net`, as if `net` were canonical
/// too (so networks stored before they were canonical still match), in a
/// few compares: host bits drop out of the masked comparison, and an IPv4
/// client is inside an IPv6 network exactly when that network lies inside
/// `::ffff:0:0/96` (its prefix at least 96 bits) and holds the client's
/// mapped address. An IPv6 `ip` is never mapped (it is canonical), so it
/// never falls inside such a network.
pub(crate) fn contains(net: &IpNet, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpNet::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(net.prefix_len())).unwrap_or(0);
            (u32::from(net.addr()) ^ u32::from(ip)) & mask == 0
        }
        (IpNet::V6(net), IpAddr::V6(ip)) => same_prefix_v6(net.addr().into(), ip.into(), net.prefix_len()),
        (IpNet::V6(net), IpAddr::V4(ip)) => {
            net.prefix_len() >= MAPPED_PREFIX_LEN
                && same_prefix_v6(net.addr().into(), ip.to_ipv6_mapped().into(), net.prefix_len())
        }
        (IpNet::V4(_), IpAddr::V6(_)) => false,
    }
}

/// An allowlist's answer for a client: an empty list allows every address;
/// an unknown address (`None`) passes no list.
#[inline]
pub(crate) fn allows(nets: &[IpNet], ip: Option<IpAddr>) -> bool {
    nets.is_empty() || ip.map(|ip| ip.to_canonical()).is_some_and(|ip| nets.iter().any(|net| contains(net, ip)))
}

/// True if `a` and `b` agree on their first `len` bits.
fn same_prefix_v6(a: u128, b: u128, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    (a ^ b) & mask == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        parse_net(s).unwrap()
    }

    #[test]
    fn mapped_networks_and_addresses_become_ipv4() {
        assert_eq!(net("::ffff:192.0.2.7"), net("192.0.2.7/32"));
        assert_eq!(net("::ffff:192.0.2.0/120"), net("192.0.2.0/24"));
        assert_eq!(net("::ffff:192.0.2.9/120"), net("192.0.2.0/24"), "host bits are cleared");
        assert_eq!(net("::ffff:0:0/96"), net("0.0.0.0/0"));
        assert_eq!(net(" 10.1.2.3/8 "), net("10.0.0.0/8"));
    }

    #[test]
    fn wider_ipv6_networks_stay_ipv6() {
        assert_eq!(net("::ffff:0:0/80").to_string(), "::/80");
        assert_eq!(net("::/0").to_string(), "::/0");
        assert_eq!(net("2001:db8::1").to_string(), "2001:db8::1/128");
        assert!(!contains(&net("::/0"), "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn stored_mapped_networks_still_match_ipv4_clients() {
        let stored: IpNet = "::ffff:203.0.113.0/120".parse().unwrap();
        assert!(contains(&stored, "203.0.113.5".parse().unwrap()));
        assert!(!contains(&stored, "203.0.114.5".parse().unwrap()));
    }

    #[test]
    fn contains_agrees_with_the_canonical_network() {
        let nets = [
            "10.0.0.0/8",
            "10.1.2.3/8",
            "192.0.2.7/32",
            "0.0.0.0/0",
            "203.0.113.0/31",
            "::ffff:192.0.2.0/120",
            "::ffff:192.0.2.9/120",
            "::ffff:0:0/96",
            "::ffff:0:0/95",
            "::ffff:0:0/80",
            "::/0",
            "2001:db8::/32",
            "2001:db8::1/128",
            "::ffff:10.0.0.1/128",
            "::ffff:10.0.0.0/97",
            "fe80::/10",
        ];
        let ips = [
            "10.0.0.1",
            "10.255.255.255",
            "11.0.0.0",
            "192.0.2.7",
            "192.0.2.8",
            "192.0.3.1",
            "203.0.113.1",
            "203.0.113.2",
            "0.0.0.0",
            "255.255.255.255",
            "127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "2001:db8::2",
            "2001:db9::",
            "::",
            "::1",
            "fe80::1",
        ];
        for text in nets {
            let stored: IpNet = text.parse().unwrap();
            for ip in ips {
                let ip = ip.parse::<IpAddr>().unwrap().to_canonical();
                let expected = canonical_net(stored).contains(&ip);
                assert_eq!(contains(&stored, ip), expected, "{text} contains {ip}");
            }
        }
    }

    #[test]
    fn text_that_is_neither_a_network_nor_an_address_is_refused() {
        for bad in ["", "10.0.0.0/33", "300.1.1.1", "proxy.local", "::ffff:1.2.3.4/129", "10.0.0.0/"] {
            assert_eq!(parse_net(bad), None, "{bad:?}");
        }
    }
}
