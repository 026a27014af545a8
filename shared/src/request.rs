//! The request as the core sees it: borrowed bytes, whatever the host's own types are.

use alloc::vec::Vec;

/// The scheme of the connection the host accepted the request on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Where the client address comes from.
#[derive(Clone, Copy)]
pub enum Peer<'a> {
    /// The TCP peer as the host reports it: `ip`, `ip:port` or `[v6]:port`.
    Socket(&'a str),
    /// The platform vouches for `CF-Connecting-IP` (a Cloudflare Worker).
    Cloudflare,
    /// The host could not say.
    Unknown,
    /// The host fetches the peer only if the decision needs it: for a limited tier's client key,
    /// or to judge a forwarded scheme when the policy trusts proxies. Most requests need neither,
    /// and in Envoy each fetch is a host call.
    Deferred(&'a dyn PeerSource),
}

/// A peer the host looks up on demand ([`Peer::Deferred`]).
/// `Sync`, so that a request holding one can be carried across an `.await` (the origin).
pub trait PeerSource: Sync {
    /// Calls `with` with the peer, as one of the other [`Peer`] forms.
    fn with_peer(&self, with: &mut dyn FnMut(Peer<'_>));
}

impl core::fmt::Debug for Peer<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Socket(addr) => f.debug_tuple("Socket").field(addr).finish(),
            Self::Cloudflare => f.write_str("Cloudflare"),
            Self::Unknown => f.write_str("Unknown"),
            Self::Deferred(_) => f.write_str("Deferred"),
        }
    }
}

/// Read access to request headers. Names are asked for in lowercase; values are raw bytes
/// because nothing guarantees a client sent UTF-8.
pub trait RequestHeaders {
    /// Calls `visit` with every value of `name`, in order of appearance.
    fn for_each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8]));
}

impl<K: AsRef<str>, V: AsRef<[u8]>> RequestHeaders for [(K, V)] {
    fn for_each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        for (key, value) in self {
            if key.as_ref().eq_ignore_ascii_case(name) {
                visit(value.as_ref());
            }
        }
    }
}

impl<K: AsRef<str>, V: AsRef<[u8]>> RequestHeaders for Vec<(K, V)> {
    fn for_each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        self.as_slice().for_each_value(name, visit);
    }
}

/// One request, borrowed from the host.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a, H: RequestHeaders + ?Sized> {
    pub method: &'a [u8],
    pub scheme: Scheme,
    /// `:authority` or `Host`; `None` when the client sent neither.
    pub authority: Option<&'a [u8]>,
    /// `:path` with its query; `None` is read as `/`.
    pub path: Option<&'a [u8]>,
    pub peer: Peer<'a>,
    pub headers: &'a H,
}
