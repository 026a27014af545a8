//! `Host`/`:authority` parsing and the allowed-host list.
//!
//! Hand-written because the `Location` we build must be provably free of anything but
//! `[a-z0-9.-_]` and bracketed IPv6: general URL crates accept (and re-encode) far more.

use alloc::string::String;
use alloc::vec::Vec;

use crate::bytes::LOWER_HEX;
use crate::json::quoted;
use alloc::borrow::Cow;
use core::net::Ipv6Addr;

/// A validated, lowercased host name or IP literal (IPv6 kept without brackets). Borrowed from
/// the request when it is already in that form, which is almost always. Bytes, all ASCII: the
/// parse accepts nothing else, so it needs no separate UTF-8 pass over the authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host<'a> {
    name: Cow<'a, [u8]>,
    ipv6: bool,
}

impl Host<'_> {
    /// The host as it is written in a URL authority (IPv6 in brackets).
    pub fn url_form(&self) -> String {
        let name = String::from_utf8_lossy(&self.name);
        if self.ipv6 { ["[", &name, "]"].concat() } else { name.into_owned() }
    }
}

const MAX_HOST_LEN: usize = 253;

/// `addr` in RFC 5952's canonical text, as std's `Display` writes it (lowercase hex, the first
/// longest run of two or more zero groups as `::`, an IPv4-mapped address as `::ffff:a.b.c.d`;
/// a proptest holds the two together). Written here because std's links `core::fmt`, which the
/// filter otherwise does without.
fn ipv6_text(addr: Ipv6Addr) -> Vec<u8> {
    let mut out = Vec::with_capacity(39);
    if let Some(v4) = addr.to_ipv4_mapped() {
        out.extend_from_slice(b"::ffff:");
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                out.push(b'.');
            }
            out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
        }
        return out;
    }
    let groups = addr.segments();
    // The first longest run of zero groups: (start, length).
    let (mut longest, mut run) = ((0, 0), (0, 0));
    for (i, &group) in groups.iter().enumerate() {
        if group != 0 {
            run = (i + 1, 0);
            continue;
        }
        run.1 += 1;
        if run.1 > longest.1 {
            longest = run;
        }
    }
    let write = |out: &mut Vec<u8>, groups: &[u16]| {
        for (i, &group) in groups.iter().enumerate() {
            if i > 0 {
                out.push(b':');
            }
            let digits = (u16::BITS - group.leading_zeros()).div_ceil(4).max(1);
            for digit in (0..digits).rev() {
                out.push(LOWER_HEX[usize::from((group >> (digit * 4)) & 0xf)]);
            }
        }
    };
    if longest.1 > 1 {
        write(&mut out, groups.get(..longest.0).unwrap_or_default());
        out.extend_from_slice(b"::");
        write(&mut out, groups.get(longest.0 + longest.1..).unwrap_or_default());
    } else {
        write(&mut out, &groups);
    }
    out
}

/// Parses `host[:port]` from an authority; `None` for anything malformed.
pub fn parse_authority(authority: &[u8]) -> Option<Host<'_>> {
    if let Some(rest) = authority.strip_prefix(b"[") {
        let close = rest.iter().position(|&b| b == b']')?;
        let (literal, after) = (rest.get(..close)?, rest.get(close + 1..)?);
        if !after.is_empty() && !valid_port(after.strip_prefix(b":")?) {
            return None;
        }
        let addr: Ipv6Addr = core::str::from_utf8(literal).ok()?.parse().ok()?;
        return Some(Host { name: Cow::Owned(ipv6_text(addr)), ipv6: true });
    }
    // The name and the port in one pass: a name has no colon, so the first one ends it.
    let (name, rest) = read_host_name(authority)?;
    match rest {
        [] => {}
        [b':', port @ ..] if valid_port(port) => {}
        _ => return None,
    }
    Some(Host { name, ipv6: false })
}

/// At most five digits worth at most 65535 (none at all included: `host:` names no port).
pub(crate) fn valid_port(port: &[u8]) -> bool {
    port.len() <= 5 && port.iter().all(u8::is_ascii_digit) && crate::bytes::decimal(port) <= u32::from(u16::MAX)
}

const OTHER: u8 = 0;
const DOT: u8 = 1;
const LABEL: u8 = 2;
const UPPER: u8 = 3;
const COLON: u8 = 4;

/// Each byte's class in a host name: a label byte (`[a-z0-9_-]`), an uppercase letter, the dot,
/// the colon that ends a name in an authority, or anything else.
const HOST_BYTE: [u8; 256] = crate::bytes::byte_classes!(byte => match byte {
    b'.' => DOT,
    b'A'..=b'Z' => UPPER,
    b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => LABEL,
    b':' => COLON,
    _ => OTHER,
});

/// A DNS name or IPv4 literal: letters, digits, `-`, `_` and non-empty dot-separated labels,
/// one trailing dot allowed (and dropped).
fn parse_host_name(name: &[u8]) -> Option<Cow<'_, [u8]>> {
    match read_host_name(name)? {
        (name, []) => Some(name),
        _ => None,
    }
}

/// [`parse_host_name`] over the start of `bytes`, up to their end or a `:`: the name, lowercased,
/// and what follows it (the `:` included). One pass, each byte classed by one table lookup:
/// this reads the authority of every request.
fn read_host_name(bytes: &[u8]) -> Option<(Cow<'_, [u8]>, &[u8])> {
    let (mut label_len, mut upper) = (0usize, false);
    let mut end = bytes.len();
    for (i, &b) in bytes.iter().enumerate() {
        match HOST_BYTE[usize::from(b)] {
            DOT => {
                if label_len == 0 {
                    return None;
                }
                label_len = 0;
            }
            LABEL => label_len += 1,
            UPPER => {
                label_len += 1;
                upper = true;
            }
            COLON => {
                end = i;
                break;
            }
            _ => return None,
        }
        if label_len > 63 {
            return None;
        }
    }
    let (name, rest) = bytes.split_at_checked(end)?;
    // Ending on a dot is the one trailing dot of a fully qualified name: it is dropped.
    let name = if label_len == 0 { name.strip_suffix(b".")? } else { name };
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return None;
    }
    Some((if upper { Cow::Owned(name.to_ascii_lowercase()) } else { Cow::Borrowed(name) }, rest))
}

/// One entry of `allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`: any name strictly below `example.com`.
    Subdomains(String),
}

impl HostPattern {
    pub(crate) fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(Self::Any);
        }
        if let Some(parent) = pattern.strip_prefix("*.") {
            return parse_host_name(parent.as_bytes())
                .map(|p| Self::Subdomains(String::from_utf8_lossy(&p).into_owned()))
                .ok_or_else(|| [&quoted(pattern), " is not a host name, *.domain or *"].concat());
        }
        parse_authority(pattern.as_bytes())
            .filter(|_| !pattern.contains(':') || pattern.starts_with('['))
            .map(|host| Self::Exact(String::from_utf8_lossy(&host.name).into_owned()))
            .ok_or_else(|| [&quoted(pattern), " is not a host name (without port), *.domain or *"].concat())
    }

    pub(crate) fn matches(&self, host: &Host<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => crate::same_bytes(name.as_bytes(), &host.name),
            Self::Subdomains(parent) => host
                .name
                .strip_suffix(parent.as_bytes())
                .and_then(|below| below.strip_suffix(b"."))
                .is_some_and(|below| !below.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::prelude::rust_2024::*;

    proptest::proptest! {
        /// Groups drawn mostly from 0, 0xffff and one-to-four-digit values, so that runs of
        /// zeros, ties between runs and IPv4-mapped addresses all come up.
        #[test]
        fn ipv6_text_is_what_std_writes(groups in proptest::array::uniform8(proptest::prop_oneof![
            3 => proptest::strategy::Just(0u16),
            1 => proptest::strategy::Just(0xffff_u16),
            1 => 1u16..0x10,
            1 => 0x10u16..0x1000,
            1 => proptest::num::u16::ANY,
        ])) {
            let addr = Ipv6Addr::from(groups);
            proptest::prop_assert_eq!(ipv6_text(addr), addr.to_string().into_bytes());
        }
    }

    #[test]
    fn ipv6_text_of_the_usual_shapes() {
        for text in ["::", "::1", "2001:db8::1", "::ffff:192.0.2.1", "1:0:0:2::3", "fe80::1:0:0:1", "1:2:3:4:5:6:7:8"] {
            let addr: Ipv6Addr = text.parse().unwrap();
            assert_eq!(ipv6_text(addr), text.as_bytes(), "{text}");
        }
    }

    fn host(text: &str) -> Option<String> {
        parse_authority(text.as_bytes()).map(|h| h.url_form())
    }

    #[test]
    fn parses_names_ports_and_literals() {
        assert_eq!(host("LocalHost:8080").as_deref(), Some("localhost"));
        assert_eq!(host("example.com.").as_deref(), Some("example.com"));
        assert_eq!(host("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host("[::1]:8443").as_deref(), Some("[::1]"));
        assert_eq!(host("[2001:DB8::1]").as_deref(), Some("[2001:db8::1]"));
        assert_eq!(host("example.com:").as_deref(), Some("example.com"));
    }

    #[test]
    fn rejects_anything_that_could_bend_a_location() {
        for bad in [
            "",
            "evil.com/x",
            "a@evil.com",
            "evil.com:99999",
            "evil.com:80:80",
            "a..b",
            ".",
            "a b",
            "evil.com\r\nx: y",
            "[::1",
            "[::1]x",
            "[nonsense]",
            "ex%41mple.com",
            "é.com",
        ] {
            assert_eq!(host(bad), None, "{bad:?}");
        }
        assert_eq!(parse_authority(b"\xff\xfe"), None);
    }

    /// Authorities as they were read before the one-pass reader: the last colon's port checked
    /// and cut, then the name (trailing dot dropped) checked label by label.
    fn by_last_colon(authority: &[u8]) -> Option<Vec<u8>> {
        let name = match authority.iter().rposition(|&b| b == b':') {
            Some(colon) if authority.get(colon + 1..).is_some_and(valid_port) => authority.get(..colon)?,
            Some(_) => return None,
            None => authority,
        };
        let name = name.strip_suffix(b".").unwrap_or(name);
        let labels_ok = name.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        });
        (!name.is_empty() && name.len() <= MAX_HOST_LEN && labels_ok).then(|| name.to_ascii_lowercase())
    }

    proptest::proptest! {
        #[test]
        fn names_and_ports_read_in_one_pass_as_by_the_last_colon(authority in "[aB.:0-9_%-]{0,16}") {
            let parsed = parse_authority(authority.as_bytes()).map(|host| host.name.into_owned());
            proptest::prop_assert_eq!(parsed, by_last_colon(authority.as_bytes()));
        }
    }

    #[test]
    fn long_names_and_labels_are_refused() {
        let label = "a".repeat(63);
        assert!(host(&label).is_some());
        assert!(host(&format!("{label}a")).is_none());
        let name = [label.as_str(); 4].join(".");
        assert_eq!(name.len(), 255);
        assert!(host(&name).is_none());
        assert!(host(&name[2..]).is_some(), "253 characters");
        assert!(host(&format!("{}.:80", &name[2..])).is_some(), "and its trailing dot");
    }

    #[test]
    fn patterns_match_exact_wildcard_and_any() {
        fn h(s: &str) -> Host<'_> {
            parse_authority(s.as_bytes()).unwrap()
        }
        let exact = HostPattern::parse("Example.com").unwrap();
        assert!(exact.matches(&h("example.com:443")));
        assert!(!exact.matches(&h("www.example.com")));
        let sub = HostPattern::parse("*.example.com").unwrap();
        assert!(sub.matches(&h("api.example.com")));
        assert!(!sub.matches(&h("example.com")));
        assert!(!sub.matches(&h("evilexample.com")));
        assert!(HostPattern::parse("*").unwrap().matches(&h("anything")));
        assert!(HostPattern::parse("example.com:80").is_err());
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("[::1]").unwrap().matches(&h("[::1]:8443")));
    }
}
