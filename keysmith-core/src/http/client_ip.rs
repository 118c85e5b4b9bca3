//! The client's address: the peer, or what trusted proxies say it is.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::HeaderLookup;
use super::headers::names;
use crate::{Error, Result};

/// Forwarding headers longer than this are ignored.
const MAX_FORWARDING_HEADER_LEN: usize = 4096;

/// The proxies whose forwarding headers are believed.
///
/// A request's client address is its peer address, unless the peer is inside
/// one of these networks: then `X-Forwarded-For` (or, when that header is
/// absent, `Forwarded`) is read from the right, and the first address that is
/// not itself a trusted proxy is the client. Entries that do not parse are
/// skipped; if every entry is a trusted proxy the left-most one is the client,
/// and if none parses the peer is. A client can prepend whatever it likes to
/// these headers, but it cannot make a trusted proxy append a false address,
/// which is why only the right end is believed.
///
/// With no trusted proxies (the default) forwarding headers are never read.
///
/// ```
/// use std::net::IpAddr;
/// use keysmith_core::http::TrustedProxies;
///
/// let proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
/// let peer: IpAddr = "10.0.0.1".parse().unwrap();
/// let headers = [("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.7")];
/// assert_eq!(proxies.client_ip(Some(peer), &headers[..]), Some("203.0.113.9".parse().unwrap()));
///
/// // From a peer that is not a trusted proxy, the header is ignored.
/// let peer: IpAddr = "198.51.100.1".parse().unwrap();
/// assert_eq!(proxies.client_ip(Some(peer), &headers[..]), Some(peer));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// No trusted proxy: the peer address is always the client's.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts the proxies inside these networks.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self { nets: nets.into_iter().collect() }
    }

    /// Trusts these networks (`10.0.0.0/8`) or single addresses (`10.0.0.1`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first entry that is neither.
    pub fn parse<S: AsRef<str>>(cidrs: impl IntoIterator<Item = S>) -> Result<Self> {
        let nets = cidrs
            .into_iter()
            .map(|cidr| {
                let cidr = cidr.as_ref().trim();
                cidr.parse::<IpNet>().or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                    Error::InvalidInput {
                        field: "trusted_proxies",
                        reason: format!("{cidr:?} is not a network or an address"),
                    }
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { nets })
    }

    /// The trusted networks.
    #[must_use]
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// True if `ip` is a trusted proxy (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    #[must_use]
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer` (`None` when the
    /// server does not know the peer: then the client is unknown too).
    #[must_use]
    pub fn client_ip<H: HeaderLookup + ?Sized>(&self, peer: Option<IpAddr>, headers: &H) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut chain = Vec::new();
        let has_xff = collect(headers, names::X_FORWARDED_FOR, &mut chain, |entry| entry);
        if !has_xff {
            collect(headers, names::FORWARDED, &mut chain, forwarded_for);
        }
        let client = chain.iter().rev().find(|ip| !self.is_trusted(**ip)).or(chain.first());
        Some(client.copied().unwrap_or(peer))
    }
}

/// Appends the addresses of every value of `name` to `chain`, left to right;
/// `entry` picks the address text out of one comma-separated element.
/// Returns whether the header was present at all.
fn collect<H: HeaderLookup + ?Sized>(
    headers: &H,
    name: &str,
    chain: &mut Vec<IpAddr>,
    entry: fn(&str) -> &str,
) -> bool {
    let mut present = false;
    for value in headers.header_values(name) {
        present = true;
        if value.len() > MAX_FORWARDING_HEADER_LEN {
            continue;
        }
        let Ok(value) = std::str::from_utf8(value) else { continue };
        chain.extend(value.split(',').filter_map(|element| parse_node(entry(element))));
    }
    present
}

/// The `for=` parameter of one `Forwarded` element (empty if it has none).
fn forwarded_for(element: &str) -> &str {
    element
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
        .map_or("", |(_, value)| value.trim())
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`,
/// `[2001:db8::1]:8080`, optionally in double quotes. `unknown` and
/// obfuscated identifiers (`_hidden`) are not addresses.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    let node = node.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(node);
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    let bracketed = node.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<std::net::Ipv6Addr>().ok().map(|ip| IpAddr::V6(ip).to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::parse(["10.0.0.0/8", "2001:db8:ffff::/48", "192.0.2.1"]).unwrap()
    }

    fn client(peer: &str, headers: &[(&str, &str)]) -> Option<IpAddr> {
        proxies().client_ip(Some(ip(peer)), headers)
    }

    #[test]
    fn peer_is_the_client_when_it_is_not_a_trusted_proxy() {
        assert_eq!(client("198.51.100.7", &[("x-forwarded-for", "203.0.113.5")]), Some(ip("198.51.100.7")));
        assert_eq!(client("198.51.100.7", &[("forwarded", "for=203.0.113.5")]), Some(ip("198.51.100.7")));
        assert_eq!(
            TrustedProxies::none().client_ip(Some(ip("10.0.0.1")), &[("x-forwarded-for", "1.1.1.1")][..]),
            Some(ip("10.0.0.1"))
        );
    }

    #[test]
    fn unknown_peer_means_unknown_client() {
        assert_eq!(proxies().client_ip(None, &[("x-forwarded-for", "1.1.1.1")][..]), None);
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client() {
        let xff = [("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.1.2.3")];
        assert_eq!(client("10.0.0.1", &xff), Some(ip("203.0.113.5")));
        // Several header lines form one list, in order.
        let lines = [("x-forwarded-for", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.5, 192.0.2.1")];
        assert_eq!(client("10.0.0.1", &lines), Some(ip("203.0.113.5")));
    }

    #[test]
    fn forwarded_is_read_when_x_forwarded_for_is_absent() {
        let fwd = [("forwarded", r#"for=6.6.6.6, For="[2001:db8::17]:4711";proto=https, for=10.0.0.9;by=10.0.0.1"#)];
        assert_eq!(client("10.0.0.1", &fwd), Some(ip("2001:db8::17")));
        let both = [("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "203.0.113.5")];
        assert_eq!(client("10.0.0.1", &both), Some(ip("203.0.113.5")));
    }

    #[test]
    fn malformed_entries_are_skipped_and_a_chain_of_proxies_gives_the_leftmost() {
        assert_eq!(client("10.0.0.1", &[("x-forwarded-for", "garbage")]), Some(ip("10.0.0.1")));
        assert_eq!(client("10.0.0.1", &[("x-forwarded-for", "203.0.113.5, nonsense")]), Some(ip("203.0.113.5")));
        assert_eq!(client("10.0.0.1", &[("forwarded", "for=unknown, for=_hidden")]), Some(ip("10.0.0.1")));
        assert_eq!(client("10.0.0.1", &[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]), Some(ip("10.9.9.9")));
        let huge = "1.1.1.1,".repeat(1000);
        assert_eq!(client("10.0.0.1", &[("x-forwarded-for", &huge)]), Some(ip("10.0.0.1")));
    }

    #[test]
    fn ports_brackets_quotes_and_mapped_addresses_are_understood() {
        assert_eq!(parse_node("203.0.113.5:8080"), Some(ip("203.0.113.5")));
        assert_eq!(parse_node("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("\"203.0.113.5\""), Some(ip("203.0.113.5")));
        assert_eq!(parse_node("::ffff:203.0.113.5"), Some(ip("203.0.113.5")));
        assert_eq!(parse_node("unknown"), None);
        // A mapped peer address is matched against IPv4 networks.
        assert!(proxies().is_trusted(ip("::ffff:10.0.0.1")));
        assert!(proxies().is_trusted(ip("2001:db8:ffff::1")));
    }

    #[test]
    fn parse_accepts_networks_and_addresses_and_names_the_bad_entry() {
        let parsed = TrustedProxies::parse(["10.0.0.0/8", " 192.0.2.1 "]).unwrap();
        assert_eq!(parsed.nets().len(), 2);
        let error = TrustedProxies::parse(["10.0.0.0/8", "proxy.local"]).unwrap_err();
        assert!(error.to_string().contains("proxy.local"), "{error}");
    }
}
