//! The request as the core sees it, owned so it can cross to a Durable Object and back.

use std::cell::RefCell;

use portcullis_core::{Peer, Request, RequestHeaders, Scheme};
use serde::{Deserialize, Serialize};

/// Method, scheme, authority, target and headers of one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Reads a Workers request. The scheme is the request URL's: on Cloudflare it is the
    /// visitor's (`CF-Visitor` says the same, but a client can send that header wherever
    /// Cloudflare does not overwrite it, so it is not read).
    pub fn from_worker(req: &worker::Request) -> worker::Result<Self> {
        let url = req.url()?;
        let headers: Vec<(String, String)> = req.headers().entries().collect();
        // The URL's authority: on Cloudflare it is built from the client's Host, and local
        // runtimes (Miniflare, `wrangler dev`) keep the client's URL there while rewriting Host.
        let authority = url.host_str().map(|host| match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        });
        let mut target = url.path().to_owned();
        if let Some(query) = url.query() {
            target.push('?');
            target.push_str(query);
        }
        Ok(Self { method: req.inner().method(), https: url.scheme() == "https", authority, target, headers })
    }

    /// The core's view, reading headers through `headers`.
    pub fn request<'a, H: RequestHeaders + ?Sized>(&'a self, headers: &'a H) -> Request<'a, H> {
        Request {
            method: self.method.as_bytes(),
            scheme: if self.https { Scheme::Https } else { Scheme::Http },
            authority: self.authority.as_deref().map(str::as_bytes),
            path: Some(self.target.as_bytes()),
            // Cloudflare vouches for CF-Connecting-IP; the core reads it itself.
            peer: Peer::Cloudflare,
            headers,
        }
    }

    /// A copy carrying only the headers named in `names` (what the core actually read).
    pub fn with_only(&self, names: &[String]) -> Self {
        Self {
            headers: self
                .headers
                .iter()
                .filter(|(name, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }
}

/// Request headers that remember which names the core asked for, so a Durable Object is sent
/// exactly those (never cookies or credentials it has no use for).
pub struct Recorded<'a> {
    all: &'a [(String, String)],
    asked: RefCell<Vec<String>>,
}

impl<'a> Recorded<'a> {
    pub fn new(all: &'a [(String, String)]) -> Self {
        Self { all, asked: RefCell::new(Vec::new()) }
    }

    pub fn asked(&self) -> Vec<String> {
        self.asked.borrow().clone()
    }
}

impl RequestHeaders for Recorded<'_> {
    fn for_each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        {
            let mut asked = self.asked.borrow_mut();
            if !asked.iter().any(|n| n == name) {
                asked.push(name.to_owned());
            }
        }
        self.all.for_each_value(name, visit);
    }
}
