//! The request as the core sees it, read once from the Workers request.

use portcullis_core::{Peer, Request, Scheme};

/// Method, scheme, authority, target and headers of one request.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: String,
    pub https: bool,
    pub authority: Option<String>,
    /// Path and query, as the client sent them (after the runtime's URL parsing).
    pub target: String,
    /// Lowercase names; repeated headers arrive combined with `, ` (Fetch semantics).
    pub headers: Vec<(String, String)>,
}

impl Incoming {
    /// Reads a Workers request: scheme, authority and target from its URL ([`split_url`]).
    pub fn from_worker(req: &worker::Request) -> Self {
        let url = req.inner().url();
        let (https, authority, target) = split_url(&url);
        let headers: Vec<(String, String)> = req.headers().entries().collect();
        Self { method: req.inner().method(), https, authority, target, headers }
    }

    /// The core's view of this request.
    pub fn request(&self) -> Request<'_, [(String, String)]> {
        Request {
            method: self.method.as_bytes(),
            scheme: if self.https { Scheme::Https } else { Scheme::Http },
            authority: self.authority.as_deref().map(str::as_bytes),
            path: Some(self.target.as_bytes()),
            // Cloudflare vouches for CF-Connecting-IP; the core reads it itself.
            peer: Peer::Cloudflare,
            headers: &self.headers,
        }
    }
}

/// Scheme, authority and target (path and query) of a request URL as the runtime serialises it
/// (`https://host[:port]/path?query`, already parsed and normalised by the runtime's WHATWG
/// URL parser), so only split here: parsing it again in Rust would bring the `url` crate and
/// IDNA's Unicode tables into the module. The authority: on Cloudflare it is built from the
/// client's Host, and local runtimes (Miniflare, `wrangler dev`) keep the client's URL there
/// while rewriting Host. The scheme is the visitor's on Cloudflare (`CF-Visitor` says the same,
/// but a client can send that header wherever Cloudflare does not overwrite it, so it is not read).
fn split_url(url: &str) -> (bool, Option<String>, String) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    // Userinfo is never part of the Host a request names.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let target = if target.starts_with('/') { target.to_owned() } else { format!("/{target}") };
    let authority = (!authority.is_empty()).then(|| authority.to_owned());
    (scheme.eq_ignore_ascii_case("https"), authority, target)
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn request_urls_split_into_scheme_authority_and_target() {
        let split = |url: &str| {
            let (https, authority, target) = split_url(url);
            (https, authority.unwrap_or_default(), target)
        };
        assert_eq!(split("https://api.example/v1/x?a=1"), (true, "api.example".into(), "/v1/x?a=1".into()));
        assert_eq!(split("http://localhost:8787/"), (false, "localhost:8787".into(), "/".into()));
        assert_eq!(split("http://[::1]:8787/a%20b"), (false, "[::1]:8787".into(), "/a%20b".into()));
        assert_eq!(split("https://u:p@h.example/#frag"), (true, "h.example".into(), "/".into()));
        assert_eq!(split("https://h.example?q"), (true, "h.example".into(), "/?q".into()));
        assert_eq!(split("nonsense"), (false, "nonsense".into(), "/".into()));
    }
}
