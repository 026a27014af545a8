//! Path canonicalisation and route templates.
//!
//! The canonical form exists so that no spelling of a limited path escapes its tier. When in
//! doubt it merges spellings (treating a decoded `%2F` as a separator, dropping `;params`) —
//! matching too much only limits more, matching too little opens a bypass.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use crate::json::quoted;
use alloc::borrow::Cow;

use percent_encoding::percent_decode;

/// Canonical form of a request target's path: percent-decoded to a fixed point, lowercased,
/// `\` read as `/`, `;params` cut from each segment, empty and `.` segments dropped, `..`
/// resolved (never above the root), no trailing slash. Always starts with `/`.
pub fn canonicalize(target: &[u8]) -> Cow<'_, str> {
    match canonical(target) {
        // The fast path only accepts ASCII, so this never needs the lossy branch.
        Cow::Borrowed(plain) => core::str::from_utf8(plain)
            .map_or_else(|_| Cow::Owned(String::from_utf8_lossy(plain).into_owned()), Cow::Borrowed),
        Cow::Owned(bytes) => {
            Cow::Owned(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
        }
    }
}

/// [`canonicalize`] as bytes (always UTF-8): the request path works on bytes, and skipping the
/// UTF-8 check of the common, already canonical, target saves a pass over it.
pub(crate) fn canonical(target: &[u8]) -> Cow<'_, [u8]> {
    match already_canonical(target) {
        Some(plain) => Cow::Borrowed(plain),
        None => {
            let end = target.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(target.len());
            Cow::Owned(canonicalize_slowly(target.get(..end).unwrap_or(target)).into_bytes())
        }
    }
}

fn canonicalize_slowly(path: &[u8]) -> String {
    let mut bytes = path.to_vec();
    // Each pass that changes anything shortens the input, so this ends; decoding to a fixed
    // point defeats double encoding (`%252e` → `%2e` → `.`).
    loop {
        let decoded: Vec<u8> = percent_decode(&bytes).collect();
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    // A decoded `%3F`/`%23` ends the path as a raw `?`/`#` would: reading `login%3Fx` as
    // `login` limits more, never less, and keeps the canonical form free of both (idempotent).
    if let Some(end) = bytes.iter().position(|&b| b == b'?' || b == b'#') {
        bytes.truncate(end);
    }
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase().replace('\\', "/");

    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        let segment = segment.split(';').next().unwrap_or_default();
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            kept => segments.push(kept),
        }
    }
    let mut canonical = String::with_capacity(text.len() + 1);
    for segment in &segments {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if canonical.is_empty() {
        canonical.push('/');
    }
    canonical
}

const OTHER: u8 = 0;
const SEGMENT: u8 = 1;
const DOT: u8 = 2;
const SLASH: u8 = 3;
const END: u8 = 4;

/// Each byte's class in a canonical path: a segment byte (`[a-z0-9_-]`), the dot, the slash,
/// the end of the path (`?`, `#`) or anything else.
const PATH_BYTE: [u8; 256] = crate::bytes::byte_classes!(byte => match byte {
    b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => SEGMENT,
    b'.' => DOT,
    b'/' => SLASH,
    b'?' | b'#' => END,
    _ => OTHER,
});

/// The common case, without allocating: a request target whose path is `/` followed by
/// segments of lowercase letters, digits, `-`, `_` and non-leading `.`, single slashes,
/// optionally one trailing slash, up to its query or fragment. One pass, each byte classed by
/// one table lookup: in a Wasm VM every operation on a byte counts, and this runs on every
/// request.
fn already_canonical(target: &[u8]) -> Option<&[u8]> {
    let body = target.strip_prefix(b"/")?;
    let mut end = body.len();
    let mut segment_start = true;
    for (i, &b) in body.iter().enumerate() {
        let ok = match PATH_BYTE[usize::from(b)] {
            SEGMENT => true,
            DOT | SLASH => !segment_start,
            END => {
                end = i;
                break;
            }
            _ => false,
        };
        if !ok {
            return None;
        }
        segment_start = b == b'/';
    }
    // One trailing slash is dropped; a lone "/" stays "/".
    let body = body.get(..end)?;
    let body = body.strip_suffix(b"/").unwrap_or(body);
    if body.last() == Some(&b'/') {
        return None;
    }
    target.get(..1 + body.len())
}

/// Whether canonical `path` lies under canonical `prefix`, on a segment boundary.
pub(crate) fn has_prefix(path: &[u8], prefix: &str) -> bool {
    prefix == "/"
        || path.strip_prefix(prefix.as_bytes()).is_some_and(|rest| rest.is_empty() || rest.first() == Some(&b'/'))
}

/// A route such as `/api/v1/jobs/{job_id}`, compiled to canonical segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteTemplate {
    segments: Vec<TemplateSegment>,
    /// The one canonical path a template of literals alone matches: such a template is one
    /// length check and one comparison away from its answer, where walking the segments
    /// costs every byte several operations inside a Wasm VM, on every tier of every request.
    exact: Option<Box<[u8]>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateSegment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param,
}

impl RouteTemplate {
    pub(crate) fn parse(template: &str) -> Result<Self, String> {
        if !template.starts_with('/') {
            return Err([&quoted(template), " must start with /"].concat());
        }
        let segments = template
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|segment| {
                if segment.starts_with('{') && segment.ends_with('}') && segment.len() > 2 {
                    Ok(TemplateSegment::Param)
                } else if segment.contains(['{', '}', '%', ';', '\\', '?', '#']) || segment == "." || segment == ".." {
                    Err([&quoted(template), ": segment ", &quoted(segment), " is neither literal nor {name}"].concat())
                } else {
                    Ok(TemplateSegment::Literal(segment.to_ascii_lowercase()))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let exact = segments
            .iter()
            .map(|segment| match segment {
                TemplateSegment::Literal(literal) => Some(["/", literal].concat()),
                TemplateSegment::Param => None,
            })
            .collect::<Option<String>>()
            .map(|path| if path.is_empty() { b"/".to_vec() } else { path.into_bytes() }.into_boxed_slice());
        Ok(Self { segments, exact })
    }

    /// [`RouteTemplate::matches`] for a path in canonical form (no empty segments, no trailing
    /// slash: as [`canonical`] returns it), which is what a request's path is matched as.
    pub(crate) fn matches_canonical(&self, canonical: &[u8]) -> bool {
        match &self.exact {
            Some(exact) => crate::same_bytes(exact, canonical),
            None => self.matches(canonical),
        }
    }

    /// Matches a canonical path (as [`canonicalize`] returns it).
    pub(crate) fn matches(&self, canonical: &[u8]) -> bool {
        // Byte slicing rather than `split('/')`: every tier is tried on every request, and the
        // string searcher costs several times more inside a Wasm VM. Empty segments are
        // skipped, as the split would filter them.
        let mut rest = canonical;
        for expected in &self.segments {
            while let [b'/', tail @ ..] = rest {
                rest = tail;
            }
            let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            let (part, tail) = rest.split_at(end);
            let ok = match expected {
                TemplateSegment::Literal(lit) => lit.as_bytes() == part,
                TemplateSegment::Param => !part.is_empty(),
            };
            if !ok || part.is_empty() {
                return false;
            }
            rest = tail;
        }
        rest.iter().all(|&b| b == b'/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_login_is_one_path() {
        for spelling in [
            "/api/v1/auth/login",
            "/API/V1/Auth/Login",
            "/api/v1/auth/login/",
            "//api//v1///auth/login",
            "/api/./v1/auth/./login",
            "/api/v1/x/../auth/login",
            "/api/v1/auth/%6c%6F%67%69%6e",
            "/api/v1/auth/%256c%256f%2567%2569%256e",
            "/api/v1/auth%2flogin",
            "/api/v1/auth/login;jsessionid=1",
            "/api;x=1/v1/auth/login",
            "/api/v1/auth/login?next=/x",
            "/api/v1/auth/login%3Fnext=/x",
            "/api/v1/auth/login%2523x",
            "/api\\v1\\auth\\login",
            "/api/v1/auth/..;/auth/login",
            "/../../api/v1/auth/login",
            "api/v1/auth/login",
        ] {
            assert_eq!(canonicalize(spelling.as_bytes()), "/api/v1/auth/login", "{spelling:?}");
        }
    }

    #[test]
    fn root_and_odd_bytes_stay_well_formed() {
        assert_eq!(canonicalize(b""), "/");
        assert_eq!(canonicalize(b"/.."), "/");
        assert_eq!(canonicalize(b"?x"), "/");
        assert_eq!(canonicalize(b"/%"), "/%");
        assert_eq!(canonicalize(b"/%zz"), "/%zz");
        assert_eq!(canonicalize(b"/\xff"), "/\u{fffd}");
        // Found by the path fuzz target: a decoded `#` must not survive into the canonical form.
        let odd = canonicalize(b"cv;/%A%3%23./lgoin/");
        assert_eq!(canonicalize(odd.as_bytes()), odd);
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_one() {
        let paths =
            ["/", "/a", "/a/", "/api/v1/jobs/5b7e-x_y.json", "/a.b/c", "//", "/a//b", "/./a", "/a/.", "/.a", "/a/b/"];
        for path in paths {
            if let Some(fast) = already_canonical(path.as_bytes()) {
                assert_eq!(fast, canonicalize_slowly(path.as_bytes()).as_bytes(), "{path}");
            }
        }
        assert_eq!(already_canonical(b"/a/b/"), Some(&b"/a/b"[..]));
        assert_eq!(already_canonical(b"/"), Some(&b"/"[..]));
        for refused in [&b"//a"[..], b"/a/./b", b"/a/../b", b"/A", b"/a%2f", b"/a;b", b"a", b"/a//"] {
            assert_eq!(already_canonical(refused), None, "{refused:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_fast_path_never_disagrees(raw in "[/a.\\-?#]{0,12}") {
            if let Some(fast) = super::already_canonical(raw.as_bytes()) {
                let slow = super::canonicalize_slowly(raw.as_bytes());
                proptest::prop_assert_eq!(fast, slow.as_bytes());
            }
        }
    }

    #[test]
    fn templates_match_whole_segments() {
        let job = RouteTemplate::parse("/api/v1/jobs/{job_id}").unwrap();
        assert!(job.matches(b"/api/v1/jobs/123"));
        assert!(!job.matches(b"/api/v1/jobs"));
        assert!(!job.matches(b"/api/v1/jobs/1/2"));
        let login = RouteTemplate::parse("/API/v1/auth/login/").unwrap();
        assert!(login.matches(b"/api/v1/auth/login"));
        assert!(RouteTemplate::parse("api").is_err());
        assert!(RouteTemplate::parse("/a/../b").is_err());
        assert!(RouteTemplate::parse("/a/{x").is_err());
        assert!(RouteTemplate::parse("/a%2fb").is_err());
    }

    proptest::proptest! {
        #[test]
        fn template_matching_is_segment_splitting(path in "[/ab{}]{0,12}", template in "(/(a|b|\\{x\\})){1,4}/?") {
            let route = RouteTemplate::parse(&template).unwrap();
            let mut parts = path.split('/').filter(|s| !s.is_empty());
            let by_split = route.segments.iter().all(|expected| match (expected, parts.next()) {
                (TemplateSegment::Literal(lit), Some(part)) => lit == part,
                (TemplateSegment::Param, Some(_)) => true,
                _ => false,
            }) && parts.next().is_none();
            proptest::prop_assert_eq!(route.matches(path.as_bytes()), by_split);
        }
    }

    proptest::proptest! {
        #[test]
        fn canonical_paths_match_literal_templates_exactly_as_by_segments(
            path in "[/ab.?{}]{0,12}",
            template in "(/(a|b|\\{x\\})){1,4}/?|/",
        ) {
            let route = RouteTemplate::parse(&template).unwrap();
            let path = canonical(path.as_bytes());
            proptest::prop_assert_eq!(route.matches_canonical(&path), route.matches(&path));
        }
    }

    #[test]
    fn prefixes_respect_segment_boundaries() {
        assert!(has_prefix(b"/docs", "/docs"));
        assert!(has_prefix(b"/docs/x", "/docs"));
        assert!(!has_prefix(b"/docsx", "/docs"));
        assert!(has_prefix(b"/anything", "/"));
    }
}
