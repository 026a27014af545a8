//! Who the client is: the peer address, or an address from forwarding headers only as far as
//! trusted hops vouch for it.

use alloc::vec::Vec;

use crate::json::quoted;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use crate::config::{ClientIpConfig, ConfigError, ForwardedHeader, compile_each};
use crate::request::{Peer, RequestHeaders};

/// The rate-limit identity of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4([u8; 4]),
    /// The address masked to the configured prefix (a /64 by default).
    V6([u8; 16]),
    /// No usable address. All such requests share one key, so garbage never mints fresh quota.
    Unknown,
}

impl ClientKey {
    /// Stable bytes for hashing: a tag, then the address.
    /// A type byte then the address octets, on the stack: the limiter hashes this per request.
    pub(crate) fn to_bytes(self) -> ([u8; 17], usize) {
        let mut out = [0u8; 17];
        let len = match self {
            Self::V4(octets) => {
                out[0] = 4;
                out[1..5].copy_from_slice(&octets);
                5
            }
            Self::V6(octets) => {
                out[0] = 6;
                out[1..].copy_from_slice(&octets);
                17
            }
            Self::Unknown => 1,
        };
        (out, len)
    }
}

impl core::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::V4(o) => write!(f, "{}", Ipv4Addr::from(*o)),
            Self::V6(o) => write!(f, "{}", Ipv6Addr::from(*o)),
            Self::Unknown => f.write_str("unknown"),
        }
    }
}

/// At most this many forwarding entries are read; a longer chain is attacker padding.
const MAX_CHAIN: usize = 32;

/// The peer of one request, parsed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResolvedPeer {
    Address {
        ip: IpAddr,
        trusted: bool,
    },
    /// The platform vouches for `CF-Connecting-IP`.
    Cloudflare,
    /// No usable address.
    Unknown,
}

impl ResolvedPeer {
    pub(crate) fn is_trusted_proxy(self) -> bool {
        matches!(self, Self::Address { trusted: true, .. })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ClientIdentity {
    trusted: Vec<Cidr>,
    trusted_hops: u8,
    header: ForwardedHeader,
    ipv6_prefix: u8,
}

impl ClientIdentity {
    pub(crate) fn compile(config: &ClientIpConfig) -> Result<Self, ConfigError> {
        let trusted = compile_each(&config.trusted_proxies, "client_ip.trusted_proxies", |cidr| {
            Cidr::parse(cidr).ok_or_else(|| [&quoted(cidr), " is not an IP address or CIDR"].concat())
        })?;
        if !(1..=128).contains(&config.ipv6_prefix) {
            return Err(ConfigError::at(
                "client_ip.ipv6_prefix",
                [itoa::Buffer::new().format(config.ipv6_prefix), " is not a prefix length between 1 and 128"].concat(),
            ));
        }
        Ok(Self {
            trusted,
            trusted_hops: config.trusted_hops,
            header: config.forwarded_header,
            ipv6_prefix: config.ipv6_prefix,
        })
    }

    /// Works out the peer once per request: its address and whether it is a trusted proxy
    /// (so its `X-Forwarded-Proto` is believed). The client key comes from the same answer.
    pub(crate) fn peer(&self, peer: &Peer<'_>) -> ResolvedPeer {
        match peer {
            Peer::Socket(addr) => match parse_ip(addr) {
                Some(ip) => ResolvedPeer::Address { ip, trusted: self.is_trusted(ip, 0) },
                None => ResolvedPeer::Unknown,
            },
            Peer::Cloudflare => ResolvedPeer::Cloudflare,
            Peer::Unknown => ResolvedPeer::Unknown,
            Peer::Deferred(source) => {
                let mut resolved = ResolvedPeer::Unknown;
                // A source answering with another deferred peer is not followed: it is unknown.
                source.with_peer(&mut |peer| {
                    if !matches!(peer, Peer::Deferred(_)) {
                        resolved = self.peer(&peer);
                    }
                });
                resolved
            }
        }
    }

    /// Whether any peer could be a trusted proxy: only then can a forwarded scheme count.
    pub(crate) fn trusts_any_peer(&self) -> bool {
        self.trusted_hops > 0 || !self.trusted.is_empty()
    }

    fn is_trusted(&self, ip: IpAddr, hop: usize) -> bool {
        hop < usize::from(self.trusted_hops) || self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The client's rate-limit key, from the peer [`ClientIdentity::peer`] resolved.
    pub(crate) fn identify<H: RequestHeaders + ?Sized>(&self, peer: ResolvedPeer, headers: &H) -> ClientKey {
        let (mut client, trusted) = match peer {
            ResolvedPeer::Address { ip, trusted } => (ip, trusted),
            ResolvedPeer::Cloudflare => {
                let mut found = None;
                headers.for_each_value("cf-connecting-ip", &mut |value| {
                    found = found.or_else(|| core::str::from_utf8(value).ok().and_then(|v| parse_ip(v.trim())));
                });
                // Cloudflare sets exactly this header; nothing else is consulted.
                return found.map_or(ClientKey::Unknown, |ip| self.key(ip));
            }
            ResolvedPeer::Unknown => return ClientKey::Unknown,
        };
        if !trusted {
            // An untrusted peer is the client whatever its headers say.
            return self.key(client);
        }

        let chain = self.forwarding_chain(headers);
        // Walk right to left: each entry was written by the hop to its right, so it is only
        // believed while that hop is trusted (the peer, hop 0, already is). A malformed entry
        // ends the walk at the last address a trusted hop vouched for.
        for (hop, entry) in chain.iter().rev().enumerate() {
            if hop > 0 && !self.is_trusted(client, hop) {
                break;
            }
            match entry {
                Some(ip) => client = *ip,
                None => break,
            }
        }
        self.key(client)
    }

    fn forwarding_chain<H: RequestHeaders + ?Sized>(&self, headers: &H) -> Vec<Option<IpAddr>> {
        let mut chain = Vec::new();
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        headers.for_each_value(name, &mut |value| {
            let Ok(text) = core::str::from_utf8(value) else {
                chain.push(None);
                return;
            };
            for element in text.split(',') {
                let ip = match self.header {
                    ForwardedHeader::XForwardedFor => parse_ip(element.trim()),
                    ForwardedHeader::Forwarded => forwarded_for(element),
                };
                chain.push(ip);
            }
        });
        // Only the rightmost entries can ever be reached; keep the chain bounded.
        if chain.len() > MAX_CHAIN {
            chain.drain(..chain.len() - MAX_CHAIN);
        }
        chain
    }

    fn key(&self, ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4.octets()),
                None => {
                    let mask = u128::MAX << (128 - u32::from(self.ipv6_prefix));
                    ClientKey::V6((u128::from(v6) & mask).to_be_bytes())
                }
            },
        }
    }
}

/// A trusted network: `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128). Host
/// bits are allowed and ignored, as `ipnet` ignores them.
///
/// Written here rather than with `ipnet` (the core's tests check the two agree): its own
/// address parser, beside std's that the filter needs for peers anyway, was 7 KiB of the Envoy
/// filter's module for one masked comparison per hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().ok()?;
        let longest = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => longest,
            // Digits only, no leading zero: `u8`'s parser would also take a sign and `08`.
            Some(digits)
                if (1..=3).contains(&digits.len())
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && (digits == "0" || !digits.starts_with('0')) =>
            {
                digits.parse::<u8>().ok().filter(|&p| p <= longest)?
            }
            Some(_) => return None,
        };
        Some(Self { network: masked(address, prefix), prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && masked(ip, self.prefix) == self.network
    }
}

/// `ip` with every bit past the first `prefix` cleared.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// An address as hosts and proxies write it: `ip`, `ip:port`, `[v6]`, `[v6]:port`.
pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    // What a host writes for an IPv4 peer, read in one pass; anything else goes to std's
    // parsers below.
    if let Some(ip) = ipv4_with_port(text.as_bytes()) {
        return Some(IpAddr::V4(ip));
    }
    // One parser per shape rather than trying each in turn (this runs on every limited
    // request). The shapes are disjoint: an IPv4 address has no colon, `ip:port` exactly one,
    // an IPv6 address at least two, and only the bracketed forms start with `[`.
    if let Some(inner) = text.strip_prefix('[') {
        if let Ok(socket) = text.parse::<SocketAddrV6>() {
            return Some(IpAddr::V6(*socket.ip()));
        }
        return inner.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    match text.bytes().filter(|&b| b == b':').take(2).count() {
        0 => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        1 => text.parse::<SocketAddrV4>().ok().map(|socket| IpAddr::V4(*socket.ip())),
        _ => text.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
    }
}

/// `a.b.c.d` or `a.b.c.d:port` in the form std's parsers accept (octets of one to three digits
/// up to 255 without a leading zero, a port of up to five digits up to 65535), else `None`,
/// which sends the text to std's parsers (a zero-padded port, say). Hand-written because it
/// reads the peer of every limited request: std's parsers (the colon count that picks one,
/// then a general parser with rollback at every step) cost about 300 more Wasm operations for
/// `203.0.113.1:40000`.
fn ipv4_with_port(text: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut rest = text;
    for (i, octet) in octets.iter_mut().enumerate() {
        let digits = rest.iter().take(3).take_while(|b| b.is_ascii_digit()).count();
        let (number, tail) = rest.split_at_checked(digits)?;
        if number.is_empty() || (number.len() > 1 && number.first() == Some(&b'0')) {
            return None;
        }
        *octet = u8::try_from(crate::bytes::decimal(number)).ok()?;
        rest = match (i, tail) {
            (3, _) => tail,
            (_, [b'.', after @ ..]) => after,
            _ => return None,
        };
    }
    match rest {
        [] => {}
        [b':', port @ ..] if !port.is_empty() && crate::host::valid_port(port) => {}
        _ => return None,
    }
    Some(Ipv4Addr::from(octets))
}

/// The `for=` node of one RFC 7239 element; `unknown` and obfuscated names give `None`.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        parse_ip(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::prelude::rust_2024::*;

    /// What std's parsers make of `text` as an IPv4 address or IPv4 socket address.
    fn ipv4_by_std(text: &str) -> Option<Ipv4Addr> {
        text.parse::<Ipv4Addr>().ok().or_else(|| text.parse::<SocketAddrV4>().ok().map(|s| *s.ip()))
    }

    #[test]
    fn the_ipv4_reader_reads_what_std_reads() {
        for text in ["203.0.113.9:41000", "0.0.0.0", "255.255.255.255:65535", "10.0.0.1:0", "1.2.3.4:080"] {
            assert_eq!(ipv4_with_port(text.as_bytes()), ipv4_by_std(text), "{text}");
            assert!(ipv4_with_port(text.as_bytes()).is_some(), "{text}");
        }
        for text in ["256.0.0.1", "01.2.3.4", "1.2.3", "1.2.3.4.5", "1.2.3.4:", "1.2.3.4:65536", "1.2.3.4:+1", "", ":1"]
        {
            assert_eq!(ipv4_with_port(text.as_bytes()), None, "{text}");
        }
        // Left to std: a zero-padded port it accepts.
        assert_eq!(parse_ip("1.2.3.4:000080"), Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
    }

    proptest::proptest! {
        #[test]
        fn the_ipv4_reader_never_disagrees_with_std(text in "[0-9]{0,4}(\\.[0-9]{0,4}){0,4}(:[0-9+]{0,7})?|[0-9.:]{0,20}") {
            if let Some(ip) = ipv4_with_port(text.as_bytes()) {
                proptest::prop_assert_eq!(Some(ip), ipv4_by_std(&text));
            }
            let by_std = ipv4_by_std(&text).is_some() || text.parse::<Ipv6Addr>().is_ok();
            proptest::prop_assert_eq!(parse_ip(&text).is_some(), by_std);
        }
    }

    #[test]
    fn networks_parse_and_contain_as_ipnet_has_them() {
        let networks = [
            "10.0.0.0/8",
            "10.1.2.3/8",
            "192.0.2.7",
            "0.0.0.0/0",
            "203.0.113.0/24",
            "198.51.100.9/32",
            "::1",
            "::/0",
            "2001:db8::/32",
            "2001:db8::1/127",
            "fe80::1%eth0",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/008",
            "10.0.0.0/0008",
            " 10.0.0.0/8",
            "10.0.0.0 /8",
            "10.0.0.0/8/8",
            "",
            "/8",
            "::ffff:10.0.0.0/104",
        ];
        let addresses: Vec<IpAddr> = [
            "10.0.0.1",
            "10.255.255.255",
            "11.0.0.0",
            "192.0.2.7",
            "192.0.2.8",
            "::1",
            "::2",
            "2001:db8:ffff::1",
            "2001:db9::",
            "2001:db8::",
            "::ffff:10.0.0.1",
            "198.51.100.9",
            "0.0.0.0",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        for text in networks {
            let oracle =
                text.parse::<ipnet::IpNet>().ok().or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from));
            let ours = Cidr::parse(text);
            assert_eq!(ours.is_some(), oracle.is_some(), "{text}");
            if let (Some(ours), Some(oracle)) = (ours, oracle) {
                for ip in &addresses {
                    assert_eq!(ours.contains(*ip), oracle.contains(ip), "{text} contains {ip}");
                }
            }
        }
    }

    fn identity(trusted: &[&str], hops: u8) -> ClientIdentity {
        ClientIdentity::compile(&ClientIpConfig {
            trusted_proxies: trusted.iter().map(|s| (*s).to_owned()).collect(),
            trusted_hops: hops,
            ..ClientIpConfig::default()
        })
        .unwrap()
    }

    fn key(id: &ClientIdentity, peer: &str, xff: &[&str]) -> String {
        let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("x-forwarded-for", *v)).collect();
        id.identify(id.peer(&Peer::Socket(peer)), headers.as_slice()).to_string()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_xff_says() {
        let id = identity(&["10.0.0.0/8"], 0);
        assert_eq!(key(&id, "203.0.113.9:5555", &["1.2.3.4"]), "203.0.113.9");
        assert_eq!(key(&identity(&[], 0), "203.0.113.9", &["1.2.3.4"]), "203.0.113.9");
    }

    #[test]
    fn walks_right_to_left_across_trusted_cidrs_only() {
        let id = identity(&["10.0.0.0/8"], 0);
        assert_eq!(key(&id, "10.0.0.1", &["6.6.6.6, 198.51.100.4, 10.1.1.1"]), "198.51.100.4");
        assert_eq!(key(&id, "10.0.0.1", &["6.6.6.6", "198.51.100.4"]), "198.51.100.4");
        assert_eq!(key(&id, "10.0.0.1", &["10.9.9.9"]), "10.9.9.9", "chain exhausted");
        assert_eq!(key(&id, "10.0.0.1", &["1.1.1.1, garbage"]), "10.0.0.1", "malformed stops");
        assert_eq!(key(&id, "10.0.0.1", &[]), "10.0.0.1");
    }

    #[test]
    fn trusted_hops_count_from_the_peer() {
        let id = identity(&[], 2);
        assert_eq!(key(&id, "192.0.2.1", &["6.6.6.6, 203.0.113.5, 192.0.2.2"]), "203.0.113.5");
        assert_eq!(key(&identity(&[], 1), "192.0.2.1", &["6.6.6.6, 203.0.113.5"]), "203.0.113.5");
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_v4_by_the_v4() {
        let id = identity(&[], 0);
        assert_eq!(key(&id, "[2001:db8:1:2:aaaa::1]:443", &[]), "2001:db8:1:2::");
        assert_eq!(key(&id, "2001:db8:1:2:bbbb::9", &[]), "2001:db8:1:2::");
        assert_eq!(key(&id, "::ffff:192.0.2.7", &[]), "192.0.2.7");
    }

    #[test]
    fn unusable_peers_share_the_unknown_key() {
        let id = identity(&[], 0);
        assert_eq!(key(&id, "envoy://internal", &[]), "unknown");
        assert_eq!(id.identify(id.peer(&Peer::Unknown), &[] as &[(&str, &str)]), ClientKey::Unknown);
    }

    #[test]
    fn cloudflare_peer_reads_cf_connecting_ip_only() {
        let id = identity(&[], 0);
        let headers = [("cf-connecting-ip", "198.51.100.77"), ("x-forwarded-for", "1.1.1.1")];
        assert_eq!(id.identify(id.peer(&Peer::Cloudflare), &headers[..]).to_string(), "198.51.100.77");
        let garbage = [("cf-connecting-ip", "nope")];
        assert_eq!(id.identify(id.peer(&Peer::Cloudflare), &garbage[..]), ClientKey::Unknown);
    }

    #[test]
    fn forwarded_header_is_parsed_per_rfc_7239() {
        let id = ClientIdentity::compile(&ClientIpConfig {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            forwarded_header: ForwardedHeader::Forwarded,
            ..ClientIpConfig::default()
        })
        .unwrap();
        let headers = [("forwarded", r#"for=6.6.6.6, for="[2001:db8::1]:4711";proto=https"#)];
        assert_eq!(id.identify(id.peer(&Peer::Socket("10.0.0.2")), &headers[..]).to_string(), "2001:db8::");
        let hidden = [("forwarded", "for=_hidden")];
        assert_eq!(id.identify(id.peer(&Peer::Socket("10.0.0.2")), &hidden[..]).to_string(), "10.0.0.2");
    }

    #[test]
    fn bad_cidr_names_its_index() {
        let err = ClientIdentity::compile(&ClientIpConfig {
            trusted_proxies: vec!["10.0.0.0/8".into(), "10.0.0.0/99".into()],
            ..ClientIpConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.path, "client_ip.trusted_proxies[1]");
    }

    #[test]
    fn each_address_shape_parses_as_before() {
        let by_trying_each = |text: &str| {
            text.parse::<IpAddr>()
                .ok()
                .or_else(|| text.parse::<core::net::SocketAddr>().ok().map(|s| s.ip()))
                .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(IpAddr::V6))
        };
        for text in [
            "1.2.3.4",
            "1.2.3.4:80",
            "1.2.3.4:80:90",
            "1.2.3.4:",
            "::1",
            "[::1]",
            "[::1]:443",
            "[::1]x",
            "::ffff:1.2.3.4",
            "[1.2.3.4]",
            "fe80::1%2",
            "[fe80::1%2]:80",
            "",
            ":",
            "::",
            "[]",
            "01.2.3.4",
            "1.2.3.4 ",
            "a:b",
            "[::1]:99999",
        ] {
            assert_eq!(parse_ip(text), by_trying_each(text), "{text:?}");
        }
    }
}
