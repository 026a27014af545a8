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
