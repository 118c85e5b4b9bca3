//! The client's address: the peer, or what trusted proxies say it is.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::HeaderLookup;
use super::headers::names;
use crate::{Error, Result};

/// A forwarding header longer than this (all its lines together) cannot be
/// read, and the client is unknown.
pub const MAX_FORWARDING_HEADER_LEN: usize = 4096;

/// The header trusted proxies write the client's address into. Exactly one
/// is read: a proxy that writes only `Forwarded` passes on whatever
/// `X-Forwarded-For` the client sent, so "whichever is present" would let
/// the client choose its own address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: <client>, <proxy1>, <proxy2>` (the default).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=<client>, for=<proxy1>;proto=https` (RFC 7239); the
    /// `for=` parameter of each element.
    Forwarded,
}

impl ForwardingHeader {
    /// The header's name, lowercase.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => names::X_FORWARDED_FOR,
            Self::Forwarded => names::FORWARDED,
        }
    }

    fn known(self) -> names::Known {
        match self {
            Self::XForwardedFor => names::Known::X_FORWARDED_FOR,
            Self::Forwarded => names::Known::FORWARDED,
        }
    }

    /// The address text of one comma-separated element.
    fn node(self, element: &str) -> &str {
        match self {
            Self::XForwardedFor => element,
            Self::Forwarded => forwarded_for(element),
        }
    }
}

/// The proxies whose forwarding header is believed, and which header that
/// is ([`ForwardingHeader::XForwardedFor`] unless
/// [configured](Self::with_header)).
///
/// A request's client address is its peer address, unless the peer is
/// inside one of these networks. Then the forwarding header is read from
/// the right, one comma-separated entry at a time: entries that are trusted
/// proxies are skipped, and the first entry that is not is the client if it
/// is an address, or else the client is unknown (`None`: refused by every
/// IP allowlist). Nothing further left is ever looked at: a client can
/// prepend whatever it likes to the header, but it cannot make a trusted
/// proxy append a false address. Likewise the client is unknown when the
/// header cannot be read (not UTF-8, or longer than
/// [`MAX_FORWARDING_HEADER_LEN`]) or an entry is empty, `unknown`, an
/// obfuscated name (`_hidden`) or anything else that is not an address.
///
/// Two cases have an address without an untrusted entry, and both answers
/// are addresses a trusted party wrote:
/// - the peer sent no forwarding header at all: the peer itself is the
///   client (a request the proxy made on its own, or from a host inside a
///   trusted network that talks to the server directly);
/// - every entry is a trusted proxy: the left-most entry is the client
///   (a trusted host that went through the proxies).
///
/// Entries are split at every comma, quoted or not: no proxy writes one
/// inside an address, and a quoted comma the client wrote can only garble
/// the client's own, left part of the header, never the proxies' part.
///
/// With no trusted proxies (the default) forwarding headers are never
/// read. Networks and addresses are canonical: `::ffff:10.0.0.0/104` is
/// `10.0.0.0/8`, and an IPv4-mapped peer or entry is its IPv4 address.
///
/// ```
/// use std::net::IpAddr;
/// use keysmith_core::http::{ForwardingHeader, TrustedProxies};
///
/// let proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
/// let peer: IpAddr = "10.0.0.1".parse().unwrap();
/// let headers = [("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.7")];
/// assert_eq!(proxies.client_ip(Some(peer), &headers[..]), Some("203.0.113.9".parse().unwrap()));
///
/// // An entry that is not an address makes the client unknown; the
/// // address left of it is never used.
/// let padded = [("x-forwarded-for", "203.0.113.9, unknown, 10.0.0.7")];
/// assert_eq!(proxies.client_ip(Some(peer), &padded[..]), None);
///
/// // From a peer that is not a trusted proxy, the header is ignored.
/// let outside: IpAddr = "198.51.100.1".parse().unwrap();
/// assert_eq!(proxies.client_ip(Some(outside), &headers[..]), Some(outside));
///
/// // A proxy that writes `Forwarded`: only that header is read.
/// let proxies = proxies.with_header(ForwardingHeader::Forwarded);
/// let both = [("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=192.0.2.60;proto=https")];
/// assert_eq!(proxies.client_ip(Some(peer), &both[..]), Some("192.0.2.60".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardingHeader,
}

impl TrustedProxies {
    /// No trusted proxy: the peer address is always the client's.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts the proxies inside these networks (made canonical).
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self { nets: nets.into_iter().map(crate::net::canonical_net).collect(), header: ForwardingHeader::default() }
    }

    /// Trusts these networks (`10.0.0.0/8`) or single addresses (`10.0.0.1`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first entry that is neither.
    pub fn parse<S: AsRef<str>>(cidrs: impl IntoIterator<Item = S>) -> Result<Self> {
        let nets = cidrs
            .into_iter()
            .map(|cidr| {
                let cidr = cidr.as_ref();
                crate::net::parse_net(cidr).ok_or_else(|| Error::InvalidInput {
                    field: "trusted_proxies",
                    reason: format!("{:?} is not a network or an address", cidr.trim()),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { nets, header: ForwardingHeader::default() })
    }

    /// Reads `header` instead of the default `X-Forwarded-For`: configure
    /// the one your proxies write.
    #[must_use]
    pub fn with_header(mut self, header: ForwardingHeader) -> Self {
        self.header = header;
        self
    }

    /// The trusted networks.
    #[must_use]
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// The forwarding header that is read.
    #[must_use]
    pub fn header(&self) -> ForwardingHeader {
        self.header
    }

    /// True if `ip` is a trusted proxy (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    #[must_use]
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer`, as described on the
    /// type; `None` when it is unknown (always so when the server does not
    /// know the peer).
    #[must_use]
    pub fn client_ip<H: HeaderLookup + ?Sized>(&self, peer: Option<IpAddr>, headers: &H) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut lines = headers.known_values(self.header.known()).peekable();
        if lines.peek().is_none() {
            return Some(peer);
        }
        // Lines in the order received form one list; walking from the right
        // means from the last line's last entry.
        let mut total = 0;
        let mut texts = Vec::new();
        for line in lines {
            total += line.len();
            if total > MAX_FORWARDING_HEADER_LEN {
                return None;
            }
            texts.push(std::str::from_utf8(line).ok()?);
        }
        let mut leftmost = None;
        for element in texts.iter().rev().flat_map(|text| text.rsplit(',')) {
            let ip = parse_node(self.header.node(element))?;
            if !self.is_trusted(ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
        leftmost
    }
}

/// The `for=` parameter of one `Forwarded` element (empty if it has none,
/// which is not an address).
fn forwarded_for(element: &str) -> &str {
    element
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
        .map_or("", |(_, value)| value.trim())
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`,
/// `[2001:db8::1]:8080`, optionally in double quotes, canonical. `unknown`,
/// obfuscated identifiers (`_hidden`) and `unix:` paths are not addresses.
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
        let lines = [("x-forwarded-for", "6.6.6.6, 203.0.113.5"), ("X-Forwarded-For", "10.0.0.3")];
        assert_eq!(client("10.0.0.1", &lines), Some(ip("203.0.113.5")));
    }

    #[test]
    fn an_entry_that_is_not_an_address_makes_the_client_unknown_never_the_address_left_of_it() {
        for xff in [
            "203.0.113.5, unknown",
            "203.0.113.5, _hidden",
            "203.0.113.5, garbage, 10.0.0.2",
            "203.0.113.5, unix:/run/app.sock",
            "203.0.113.5,,10.0.0.2",
            "203.0.113.5, ",
            "",
            "203.0.113.5:99999",
        ] {
            assert_eq!(client("10.0.0.1", &[("x-forwarded-for", xff)]), None, "{xff:?}");
        }
        let fwd = TrustedProxies::parse(["10.0.0.0/8"]).unwrap().with_header(ForwardingHeader::Forwarded);
        for value in ["for=203.0.113.5, for=unknown", "for=203.0.113.5, for=_hidden", "for=203.0.113.5, proto=https"] {
            assert_eq!(fwd.client_ip(Some(ip("10.0.0.1")), &[("forwarded", value)][..]), None, "{value:?}");
        }
    }

    #[test]
    fn an_unreadable_header_from_a_trusted_proxy_makes_the_client_unknown() {
        let peer = Some(ip("10.0.0.1"));
        let huge = format!("{}203.0.113.5", "1.1.1.1,".repeat(1000));
        assert_eq!(proxies().client_ip(peer, &[("x-forwarded-for", huge.as_bytes())][..]), None);
        let not_utf8: &[(&str, &[u8])] = &[("x-forwarded-for", b"\xff\xfe, 203.0.113.5")];
        assert_eq!(proxies().client_ip(peer, not_utf8), None);
        // Unreadable in any line, and long only all lines together.
        let split: &[(&str, &[u8])] = &[("x-forwarded-for", b"\xff"), ("x-forwarded-for", b"203.0.113.5")];
        assert_eq!(proxies().client_ip(peer, split), None);
        let half = "1.1.1.1,".repeat(300);
        let lines = [("x-forwarded-for", half.as_str()), ("x-forwarded-for", half.as_str())];
        assert_eq!(proxies().client_ip(peer, &lines[..]), None);
        // At the cap exactly it is read.
        let at_cap = format!("{}203.0.113.5", " ".repeat(MAX_FORWARDING_HEADER_LEN - 11));
        assert_eq!(proxies().client_ip(peer, &[("x-forwarded-for", at_cap.as_str())][..]), Some(ip("203.0.113.5")));
    }

    #[test]
    fn no_forwarding_header_from_a_trusted_proxy_means_the_peer_is_the_client() {
        assert_eq!(client("10.0.0.1", &[]), Some(ip("10.0.0.1")));
        assert_eq!(client("10.0.0.1", &[("forwarded", "for=203.0.113.5")]), Some(ip("10.0.0.1")));
    }

    #[test]
    fn a_chain_of_trusted_proxies_only_gives_the_leftmost() {
        assert_eq!(client("10.0.0.1", &[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]), Some(ip("10.9.9.9")));
        assert_eq!(client("10.0.0.1", &[("x-forwarded-for", "10.0.0.1")]), Some(ip("10.0.0.1")));
    }

    #[test]
    fn only_the_configured_forwarding_header_is_read() {
        let both = [("forwarded", "for=203.0.113.77"), ("x-forwarded-for", "203.0.113.5")];
        assert_eq!(client("10.0.0.1", &both), Some(ip("203.0.113.5")));
        let forwarded = proxies().with_header(ForwardingHeader::Forwarded);
        assert_eq!(forwarded.header(), ForwardingHeader::Forwarded);
        assert_eq!(forwarded.client_ip(Some(ip("10.0.0.1")), &both[..]), Some(ip("203.0.113.77")));
        // A proxy that writes only `Forwarded` passes the client's own
        // `X-Forwarded-For` on: it is not read.
        let spoof = [("x-forwarded-for", "203.0.113.5")];
        assert_eq!(forwarded.client_ip(Some(ip("10.0.0.1")), &spoof[..]), Some(ip("10.0.0.1")));
        let fwd = [("forwarded", r#"for=6.6.6.6, For="[2001:db8::17]:4711";proto=https, for=10.0.0.9;by=10.0.0.1"#)];
        assert_eq!(forwarded.client_ip(Some(ip("10.0.0.1")), &fwd[..]), Some(ip("2001:db8::17")));
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
        // A mapped entry behind the proxy is its IPv4 address.
        assert_eq!(client("10.0.0.1", &[("x-forwarded-for", "::ffff:203.0.113.5")]), Some(ip("203.0.113.5")));
    }

    #[test]
    fn trusted_proxies_written_as_mapped_ipv6_match_ipv4_peers_and_hops() {
        for written in ["::ffff:10.0.0.0/104", "::ffff:10.0.0.1"] {
            let parsed = TrustedProxies::parse([written]).unwrap();
            assert!(parsed.is_trusted(ip("10.0.0.1")), "{written}");
            let headers = [("x-forwarded-for", "203.0.113.5, 10.0.0.1")];
            assert_eq!(parsed.client_ip(Some(ip("10.0.0.1")), &headers[..]), Some(ip("203.0.113.5")), "{written}");
        }
        let built = TrustedProxies::new(["::ffff:192.0.2.0/120".parse().unwrap()]);
        assert_eq!(built.nets(), ["192.0.2.0/24".parse::<IpNet>().unwrap()]);
        assert!(built.is_trusted(ip("192.0.2.9")));
    }

    #[test]
    fn parse_accepts_networks_and_addresses_and_names_the_bad_entry() {
        let parsed = TrustedProxies::parse(["10.0.0.0/8", " 192.0.2.1 "]).unwrap();
        assert_eq!(parsed.nets().len(), 2);
        assert_eq!(parsed.header(), ForwardingHeader::XForwardedFor);
        let error = TrustedProxies::parse(["10.0.0.0/8", "proxy.local"]).unwrap_err();
        assert!(error.to_string().contains("proxy.local"), "{error}");
    }
}
