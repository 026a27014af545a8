//! Fetching a job's media safely. The URL comes from a user, so the fetch must never become a
//! way into the origin's own network:
//!
//! - names are resolved here ([`GuardedResolver`]) and only public addresses (or networks the
//!   operator opened) are handed to the HTTP client, which connects to exactly those. Every new
//!   connection resolves again and is checked again, so DNS rebinding gains nothing; IP literals
//!   (which the client would not resolve) are checked before each request;
//! - redirects are followed by hand, at most [`MAX_REDIRECTS`], each hop checked by the same
//!   rules (`https` only, the allow-list, the addresses);
//! - connect, read and total time are bounded, and the body is capped while it streams;
//! - what the job's owner sees is a [`FetchError`] class; the detail (address, URL, library
//!   error) goes to the log only.

pub mod address;

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{StatusCode, Url};

pub use address::{AddressRule, Reserved};

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// What may be fetched, and how long and how much of it.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// When set, only these hosts (exact names, or `*.example.com` for the subdomains of one).
    pub allowed_hosts: Option<Vec<String>>,
    /// Non-public networks the operator opened on purpose (an internal media store).
    pub allowed_networks: Vec<ipnet::IpNet>,
    pub max_bytes: u64,
    pub connect_timeout: Duration,
    /// Longest silence while reading.
    pub read_timeout: Duration,
    /// The whole fetch, redirects included.
    pub total_timeout: Duration,
    /// Extra trust roots (PEM) for media hosts with a private CA.
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            allowed_hosts: None,
            allowed_networks: Vec::new(),
            max_bytes: 25 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(15),
            total_timeout: Duration::from_secs(120),
            extra_roots_pem: None,
        }
    }
}

/// Why the media could not be fetched, as its owner is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("the media could not be fetched: its URL is not an https:// URL of an allowed host")]
    NotAllowed,
    #[error("the media could not be fetched: its host resolves to an address that is not public")]
    NotPublic,
    #[error("the media could not be fetched: its host could not be reached")]
    Unreachable,
    #[error("the media could not be fetched: the media server took too long")]
    TimedOut,
    #[error("the media could not be fetched: it is larger than {max_bytes} bytes")]
    TooLarge { max_bytes: u64 },
    #[error("the media could not be fetched: the media server answered {0}")]
    Status(u16),
    #[error("the media could not be fetched: too many redirects")]
    TooManyRedirects,
    #[error("the media could not be fetched: the transfer broke off")]
    Interrupted,
}

/// How host names become addresses; the system resolver unless a test brings its own.
pub trait Lookup: Send + Sync {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + '_>>;
}

/// The operating system's resolver (getaddrinfo, via tokio).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + '_>> {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.map(|a| a.ip()).collect()) })
    }
}

/// A resolver refusal, found again in the client's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to non-public addresses ({refused})")]
struct Refused {
    host: String,
    refused: String,
}

/// The client's resolver: looks the name up and passes on only the addresses the rule admits.
pub struct GuardedResolver {
    lookup: Arc<dyn Lookup>,
    rule: AddressRule,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = self.lookup.clone();
        let rule = self.rule.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = lookup.lookup(&host).await?;
            let (admitted, refused): (Vec<IpAddr>, Vec<IpAddr>) =
                found.into_iter().partition(|addr| rule.check(*addr).is_ok());
            if !refused.is_empty() {
                tracing::warn!(%host, ?refused, "media host resolved to non-public addresses; not connecting to them");
            }
            if admitted.is_empty() {
                let refused = refused.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                return Err(Box::new(Refused { host, refused }) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Addrs = Box::new(admitted.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Fetches media by the rules above. Cheap to clone.
#[derive(Clone)]
pub struct MediaFetcher {
    client: reqwest::Client,
    settings: Arc<MediaSettings>,
    rule: AddressRule,
}

impl MediaFetcher {
    pub fn new(settings: MediaSettings) -> Result<Self, String> {
        Self::with_lookup(settings, Arc::new(SystemLookup))
    }

    pub fn with_lookup(settings: MediaSettings, lookup: Arc<dyn Lookup>) -> Result<Self, String> {
        let rule = AddressRule { allowed_networks: settings.allowed_networks.clone() };
        let resolver = GuardedResolver { lookup, rule: rule.clone() };
        let mut builder = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver))
            // A proxy from the environment would resolve and connect on our behalf, unchecked.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            // The total limit is applied once around the whole fetch, redirects included (`fetch`).
            .use_rustls_tls();
        if let Some(pem) = &settings.extra_roots_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("media CA: {e}"))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| format!("media client: {e}"))?;
        Ok(Self { client, settings: Arc::new(settings), rule })
    }

    pub fn settings(&self) -> &MediaSettings {
        &self.settings
    }

    /// Whether `url` may be requested at all (before any connection): `https`, no user info, a
    /// host on the allow-list, and an IP literal only if its address passes.
    fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        if url.scheme() != "https" || !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::NotAllowed);
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_ascii_lowercase(),
            Some(url::Host::Ipv4(v4)) => {
                self.rule.check(IpAddr::V4(v4)).map_err(|_| FetchError::NotPublic)?;
                v4.to_string()
            }
            Some(url::Host::Ipv6(v6)) => {
                self.rule.check(IpAddr::V6(v6)).map_err(|_| FetchError::NotPublic)?;
                v6.to_string()
            }
            None => return Err(FetchError::NotAllowed),
        };
        match &self.settings.allowed_hosts {
            Some(allowed) if !allowed.iter().any(|pattern| host_matches(pattern, &host)) => Err(FetchError::NotAllowed),
            _ => Ok(()),
        }
    }

    /// The media at `url`, whole, at most `max_bytes`. `job` only labels the log lines.
    pub async fn fetch(&self, url: &str, job: &str) -> Result<Vec<u8>, FetchError> {
        let total = self.settings.total_timeout;
        match tokio::time::timeout(total, self.fetch_unbounded(url, job)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!(%job, "media fetch exceeded its total time limit of {total:?}");
                Err(FetchError::TimedOut)
            }
        }
    }

    async fn fetch_unbounded(&self, url: &str, job: &str) -> Result<Vec<u8>, FetchError> {
        let mut url = Url::parse(url).map_err(|e| {
            tracing::warn!(%job, error = %e, "media URL does not parse");
            FetchError::NotAllowed
        })?;
        let mut hops = 0;
        let mut response = loop {
            if let Err(refusal) = self.check_url(&url) {
                tracing::warn!(%job, %url, ?refusal, "media URL refused before connecting");
                return Err(refusal);
            }
            let response = self.client.get(url.clone()).send().await.map_err(|e| classify(&e, job))?;
            if !response.status().is_redirection() {
                break response;
            }
            let next = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|location| url.join(location).ok());
            let Some(next) = next else {
                tracing::warn!(%job, status = %response.status(), "media redirect without a usable Location");
                return Err(FetchError::Status(response.status().as_u16()));
            };
            hops += 1;
            if hops > MAX_REDIRECTS {
                tracing::warn!(%job, "media fetch: more than {MAX_REDIRECTS} redirects");
                return Err(FetchError::TooManyRedirects);
            }
            tracing::info!(%job, from = %url, to = %next, "media redirect");
            url = next;
        };
        if response.status() != StatusCode::OK {
            tracing::warn!(%job, %url, status = %response.status(), "media server refused");
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let max_bytes = self.settings.max_bytes;
        if response.content_length().is_some_and(|length| length > max_bytes) {
            tracing::warn!(%job, length = ?response.content_length(), "media larger than the limit (declared)");
            return Err(FetchError::TooLarge { max_bytes });
        }
        // Read as it streams: the cap holds whatever length was (or was not) declared, and the
        // one buffer is handed on as it is.
        let mut body = Vec::with_capacity(response.content_length().unwrap_or(0).min(max_bytes) as usize);
        while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e, job))? {
            if body.len() as u64 + chunk.len() as u64 > max_bytes {
                tracing::warn!(%job, "media larger than the limit (while streaming)");
                return Err(FetchError::TooLarge { max_bytes });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// `pattern` is a host name, or `*.domain` for every subdomain of `domain`.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
        None => host == pattern,
    }
}

/// The owner's class for a client error; the error itself is logged.
fn classify(err: &reqwest::Error, job: &str) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if cause.downcast_ref::<Refused>().is_some() {
            tracing::warn!(%job, error = %cause, "media fetch refused");
            return FetchError::NotPublic;
        }
        source = cause.source();
    }
    tracing::warn!(%job, error = ?err, "media fetch failed");
    if err.is_timeout() {
        FetchError::TimedOut
    } else if err.is_connect() {
        FetchError::Unreachable
    } else {
        FetchError::Interrupted
    }
}

#[cfg(test)]
mod tests {
    use super::host_matches;

    #[test]
    fn host_patterns_match_exactly_or_by_subdomain() {
        assert!(host_matches("media.example", "media.example"));
        assert!(host_matches("Media.Example.", "media.example"));
        assert!(!host_matches("media.example", "evilmedia.example"));
        assert!(!host_matches("media.example", "media.example.evil"));
        assert!(host_matches("*.example", "cdn.example"));
        assert!(host_matches("*.example", "a.b.example"));
        assert!(!host_matches("*.example", "example"));
        assert!(!host_matches("*.example", "badexample"));
    }
}
