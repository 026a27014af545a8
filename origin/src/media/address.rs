//! Which IP addresses the media fetcher may connect to: public unicast only, unless the operator
//! opened a network on purpose (`PORTCULLIS_MEDIA_ALLOW_NETWORKS`). `std`'s `is_global` is still
//! unstable and `ipnet` has no notion of special-purpose ranges, so the IANA special-purpose
//! registries are written out here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is not one the fetcher connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    SharedAddressSpace,
    Documentation,
    Benchmarking,
    Multicast,
    Broadcast,
    /// Any other special-purpose range (IETF protocol assignments, reserved, discard, SRv6…).
    SpecialPurpose,
}

/// IPv4 special-purpose ranges (RFC 6890 and the IANA registry), as (network, prefix, class).
const V4_RESERVED: [(Ipv4Addr, u8, Reserved); 15] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, Reserved::Unspecified),
    (Ipv4Addr::new(10, 0, 0, 0), 8, Reserved::Private),
    (Ipv4Addr::new(100, 64, 0, 0), 10, Reserved::SharedAddressSpace),
    (Ipv4Addr::new(127, 0, 0, 0), 8, Reserved::Loopback),
    (Ipv4Addr::new(169, 254, 0, 0), 16, Reserved::LinkLocal),
    (Ipv4Addr::new(172, 16, 0, 0), 12, Reserved::Private),
    (Ipv4Addr::new(192, 0, 0, 0), 24, Reserved::SpecialPurpose),
    (Ipv4Addr::new(192, 0, 2, 0), 24, Reserved::Documentation),
    (Ipv4Addr::new(192, 88, 99, 0), 24, Reserved::SpecialPurpose),
    (Ipv4Addr::new(192, 168, 0, 0), 16, Reserved::Private),
    (Ipv4Addr::new(198, 18, 0, 0), 15, Reserved::Benchmarking),
    (Ipv4Addr::new(198, 51, 100, 0), 24, Reserved::Documentation),
    (Ipv4Addr::new(203, 0, 113, 0), 24, Reserved::Documentation),
    (Ipv4Addr::new(224, 0, 0, 0), 4, Reserved::Multicast),
    // 240/4 is reserved; its last address is the limited broadcast (checked first below).
    (Ipv4Addr::new(240, 0, 0, 0), 4, Reserved::SpecialPurpose),
];

/// IPv6 special-purpose ranges that embed no IPv4 address.
const V6_RESERVED: [(Ipv6Addr, u8, Reserved); 10] = [
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, Reserved::Private),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, Reserved::SpecialPurpose),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, Reserved::Documentation),
    (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48, Reserved::Benchmarking),
    // The rest of 2001::/23: Teredo, ORCHID, protocol anycasts.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, Reserved::SpecialPurpose),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, Reserved::Documentation),
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16, Reserved::SpecialPurpose),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, Reserved::Private),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, Reserved::LinkLocal),
    // Site-local, deprecated but still routed inside some networks.
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, Reserved::Private),
];

fn v4_in(addr: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    u32::from(addr) & mask == u32::from(net) & mask
}

fn v6_in(addr: Ipv6Addr, net: Ipv6Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
    u128::from(addr) & mask == u128::from(net) & mask
}

fn classify_v4(addr: Ipv4Addr) -> Option<Reserved> {
    if addr == Ipv4Addr::BROADCAST {
        return Some(Reserved::Broadcast);
    }
    V4_RESERVED.iter().find(|(net, prefix, _)| v4_in(addr, *net, *prefix)).map(|(_, _, class)| *class)
}

/// The IPv4 address an IPv6 address carries, in the forms that reach it: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4
/// (`2002:AABB:CCDD::`).
fn embedded_v4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(addr);
    let low = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if let Some(mapped) = addr.to_ipv4_mapped() {
        return Some(mapped);
    }
    if bits >> 32 == 0 && bits > 1 {
        return Some(low);
    }
    if v6_in(addr, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some(low);
    }
    if v6_in(addr, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
    }
    None
}

fn classify_v6(addr: Ipv6Addr) -> Option<Reserved> {
    if addr.is_unspecified() {
        return Some(Reserved::Unspecified);
    }
    if addr.is_loopback() {
        return Some(Reserved::Loopback);
    }
    if addr.is_multicast() {
        return Some(Reserved::Multicast);
    }
    if let Some(v4) = embedded_v4(addr) {
        // A wrapped public address is reachable the way the wrapper says; a wrapped private one
        // is the private address.
        return classify_v4(v4);
    }
    V6_RESERVED.iter().find(|(net, prefix, _)| v6_in(addr, *net, *prefix)).map(|(_, _, class)| *class)
}

/// Why `addr` is not a public unicast address, or `None` when it is one.
pub fn reserved(addr: IpAddr) -> Option<Reserved> {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// The addresses the fetcher connects to: public ones, and those inside a network the operator
/// opened (compared both as written and as the IPv4 address an IPv6 form carries).
#[derive(Debug, Clone, Default)]
pub struct AddressRule {
    pub allowed_networks: Vec<IpNet>,
}

impl AddressRule {
    pub fn check(&self, addr: IpAddr) -> Result<(), Reserved> {
        let Some(class) = reserved(addr) else { return Ok(()) };
        let unwrapped = match addr {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let opened = |a: IpAddr| self.allowed_networks.iter().any(|net| net.contains(&a));
        if opened(addr) || unwrapped.is_some_and(opened) { Ok(()) } else { Err(class) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<Reserved> {
        reserved(text.parse().unwrap_or_else(|_| panic!("{text} is an address")))
    }

    #[test]
    fn public_addresses_pass() {
        for public in ["1.1.1.1", "8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"] {
            assert_eq!(class(public), None, "{public}");
        }
        // A public address in a wrapper stays public.
        assert_eq!(class("::ffff:8.8.8.8"), None);
        assert_eq!(class("64:ff9b::808:808"), None);
    }

    #[test]
    fn every_special_purpose_range_is_refused_in_every_spelling() {
        use Reserved::*;
        for (text, expected) in [
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.254", Private),
            ("192.168.1.1", Private),
            ("169.254.169.254", LinkLocal),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("192.0.0.8", SpecialPurpose),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.1", Benchmarking),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("240.0.0.1", SpecialPurpose),
            ("255.255.255.255", Broadcast),
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", SpecialPurpose),
            ("100::1", SpecialPurpose),
            ("64:ff9b:1::1", Private),
            // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms of private addresses.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::127.0.0.1", Loopback),
            ("::10.0.0.1", Private),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::a00:1", Private),
            ("2002:7f00:1::", Loopback),
            ("2002:a9fe:a9fe::1", LinkLocal),
        ] {
            assert_eq!(class(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn an_opened_network_admits_its_addresses_and_their_wrapped_forms_only() {
        let rule = AddressRule { allowed_networks: vec!["127.0.0.2/32".parse().unwrap()] };
        assert_eq!(rule.check("127.0.0.2".parse().unwrap()), Ok(()));
        assert_eq!(rule.check("::ffff:127.0.0.2".parse().unwrap()), Ok(()));
        assert_eq!(rule.check("127.0.0.1".parse().unwrap()), Err(Reserved::Loopback));
        assert_eq!(rule.check("8.8.4.4".parse().unwrap()), Ok(()));
        assert_eq!(AddressRule::default().check("127.0.0.2".parse().unwrap()), Err(Reserved::Loopback));
    }
}
