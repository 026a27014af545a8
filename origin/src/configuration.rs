//! Settings that are not secret, from `PORTCULLIS_*` environment variables with defaults that
//! match the local stack. Secrets come from [`crate::secrets`] only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::executor::ExecutorSettings;
use crate::media::MediaSettings;
use crate::secrets::Environment;

#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTPS listener (127.0.0.1:9443 behind Envoy).
    pub listen: SocketAddr,
    /// Optional plain-HTTP listener that only redirects to HTTPS.
    pub plain_listen: Option<SocketAddr>,
    /// PEM certificate chain; its key is the secret `PORTCULLIS_TLS_KEY`.
    pub tls_cert: PathBuf,
    /// When set, only clients with a certificate from this CA (Envoy) are accepted (mTLS).
    pub client_ca: Option<PathBuf>,
    /// The `portcullis-core` policy document: headers, allowed hosts, redirect, tiers.
    pub policy_json: String,
    /// Where the policy's rate limits are counted with other origins and Envoys (Redis, or a
    /// Redis Cluster's seeds); `None` counts in this process.
    pub redis: Option<portcullis_ratelimit::store::Target>,
    /// Longest wait for one Redis answer before this origin's own limiter decides.
    pub redis_timeout: Duration,
    /// Browser origins allowed by CORS (credentials allowed; never `*`).
    pub cors_origins: Vec<String>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    /// A rotated refresh token presented again within this window is a concurrent refresh,
    /// refused without revoking its family; after it, reuse revokes the family.
    pub refresh_grace: Duration,
    pub body_limit: usize,
    pub request_timeout: Duration,
    pub db_max_connections: u32,
    /// OpenAI/whisper-compatible speech-to-text base URL (`…/v1/audio/transcriptions`).
    pub stt_url: Option<String>,
    pub stt_model: String,
    /// How the job executor runs jobs (poll, concurrency, lease, attempts, time limit).
    pub executor: ExecutorSettings,
    /// What the media fetcher may reach, and how long and how much it reads.
    pub media: MediaSettings,
    /// Per-account throttling of failed logins and the bound on concurrent password checks.
    pub login: LoginSettings,
}

/// How failed logins slow an account down (see `migrations/20261201000002_login_throttle.sql`).
#[derive(Debug, Clone)]
pub struct LoginSettings {
    /// Consecutive failures an account takes before it must wait.
    pub free_failures: u32,
    /// The first wait; it doubles with each further failure.
    pub base_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// Password checks (argon2id, ≈19 MiB each) run at once; past it logins get 503.
    pub max_concurrent_verifications: usize,
}

impl Default for LoginSettings {
    fn default() -> Self {
        Self {
            free_failures: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_concurrent_verifications: default_verifications(),
        }
    }
}

/// One password check per core: argon2id is CPU-bound, more at once only queue up memory.
fn default_verifications() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// The policy when none is configured: the seed headers, the local host names, no rate limits
/// (the edge limits per client; behind it the origin sees Envoy as its only peer).
pub const DEFAULT_POLICY: &str =
    r#"{"allowed_hosts": ["localhost", "127.0.0.1"], "rate_limits": [], "https_redirect": {"https_port": 9443}}"#;

/// A setting that could not be read: its variable and why.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct SettingError {
    pub variable: &'static str,
    pub reason: String,
}

impl Settings {
    pub fn from_env(env: &dyn Environment) -> Result<Self, Vec<SettingError>> {
        let mut errors = Vec::new();
        let parse = |variable: &'static str, default: &str| -> String {
            env.var(variable).filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned())
        };
        let listen = parse("PORTCULLIS_LISTEN", "127.0.0.1:9443");
        let plain_listen = parse("PORTCULLIS_PLAIN_LISTEN", "");
        let tls_cert = parse("PORTCULLIS_TLS_CERT", ".portcullis/certs/origin.crt");
        let client_ca = parse("PORTCULLIS_CLIENT_CA", "");
        let policy_file = parse("PORTCULLIS_POLICY_FILE", "");
        let policy_inline = parse("PORTCULLIS_POLICY", DEFAULT_POLICY);
        let cors = parse("PORTCULLIS_CORS_ORIGINS", "");
        let redis_urls = parse("PORTCULLIS_REDIS_URL", "");
        let redis_timeout_ms = parse("PORTCULLIS_REDIS_TIMEOUT_MS", "50");
        let issuer = parse("PORTCULLIS_JWT_ISSUER", "portcullis");
        let audience = parse("PORTCULLIS_JWT_AUDIENCE", "portcullis-api");
        let access = parse("PORTCULLIS_ACCESS_TTL_SECS", "900");
        let refresh = parse("PORTCULLIS_REFRESH_TTL_SECS", "1209600");
        let grace = parse("PORTCULLIS_REFRESH_GRACE_SECS", "10");
        let body_limit = parse("PORTCULLIS_BODY_LIMIT_BYTES", "65536");
        let timeout = parse("PORTCULLIS_REQUEST_TIMEOUT_SECS", "30");
        let pool = parse("PORTCULLIS_DB_MAX_CONNECTIONS", "10");
        let stt_url = parse("PORTCULLIS_STT_URL", "");
        let stt_model = parse("PORTCULLIS_STT_MODEL", "whisper-1");
        // The executor's, the fetcher's and the throttle's own defaults, so each number is written once.
        let (jobs, fetch, logins) = (ExecutorSettings::default(), MediaSettings::default(), LoginSettings::default());
        let poll = parse("PORTCULLIS_JOB_POLL_MILLIS", &jobs.poll.as_millis().to_string());
        let concurrency = parse("PORTCULLIS_JOB_CONCURRENCY", &jobs.concurrency.to_string());
        let lease = parse("PORTCULLIS_JOB_LEASE_SECS", &jobs.lease.as_secs().to_string());
        let attempts = parse("PORTCULLIS_JOB_MAX_ATTEMPTS", &jobs.max_attempts.to_string());
        let job_timeout = parse("PORTCULLIS_JOB_TIMEOUT_SECS", &jobs.job_timeout.as_secs().to_string());
        let media_hosts = parse("PORTCULLIS_MEDIA_HOSTS", "");
        let media_networks = parse("PORTCULLIS_MEDIA_ALLOW_NETWORKS", "");
        let media_ca = parse("PORTCULLIS_MEDIA_CA_FILE", "");
        let media_max = parse("PORTCULLIS_MEDIA_MAX_BYTES", &fetch.max_bytes.to_string());
        let media_connect =
            parse("PORTCULLIS_MEDIA_CONNECT_TIMEOUT_SECS", &fetch.connect_timeout.as_secs().to_string());
        let media_read = parse("PORTCULLIS_MEDIA_READ_TIMEOUT_SECS", &fetch.read_timeout.as_secs().to_string());
        let media_total = parse("PORTCULLIS_MEDIA_TIMEOUT_SECS", &fetch.total_timeout.as_secs().to_string());
        let free_failures = parse("PORTCULLIS_LOGIN_FREE_FAILURES", &logins.free_failures.to_string());
        let base_delay = parse("PORTCULLIS_LOGIN_BASE_DELAY_SECS", &logins.base_delay.as_secs().to_string());
        let max_delay = parse("PORTCULLIS_LOGIN_MAX_DELAY_SECS", &logins.max_delay.as_secs().to_string());
        let verifications = parse("PORTCULLIS_LOGIN_CONCURRENCY", &logins.max_concurrent_verifications.to_string());

        let mut number = |variable: &'static str, text: &str, min: u64| -> u64 {
            match text.trim().parse::<u64>() {
                Ok(n) if n >= min => n,
                _ => {
                    errors.push(SettingError { variable, reason: format!("{text:?} is not a whole number ≥ {min}") });
                    min
                }
            }
        };
        let access_ttl = Duration::from_secs(number("PORTCULLIS_ACCESS_TTL_SECS", &access, 1));
        let refresh_ttl = Duration::from_secs(number("PORTCULLIS_REFRESH_TTL_SECS", &refresh, 1));
        let refresh_grace = Duration::from_secs(number("PORTCULLIS_REFRESH_GRACE_SECS", &grace, 0));
        let body_limit = number("PORTCULLIS_BODY_LIMIT_BYTES", &body_limit, 1024) as usize;
        let request_timeout = Duration::from_secs(number("PORTCULLIS_REQUEST_TIMEOUT_SECS", &timeout, 1));
        let db_max_connections = number("PORTCULLIS_DB_MAX_CONNECTIONS", &pool, 1) as u32;
        let executor = ExecutorSettings {
            poll: Duration::from_millis(number("PORTCULLIS_JOB_POLL_MILLIS", &poll, 10)),
            concurrency: number("PORTCULLIS_JOB_CONCURRENCY", &concurrency, 1) as usize,
            lease: Duration::from_secs(number("PORTCULLIS_JOB_LEASE_SECS", &lease, 1)),
            max_attempts: number("PORTCULLIS_JOB_MAX_ATTEMPTS", &attempts, 1) as u32,
            job_timeout: Duration::from_secs(number("PORTCULLIS_JOB_TIMEOUT_SECS", &job_timeout, 1)),
        };
        let login = LoginSettings {
            free_failures: number("PORTCULLIS_LOGIN_FREE_FAILURES", &free_failures, 1) as u32,
            base_delay: Duration::from_secs(number("PORTCULLIS_LOGIN_BASE_DELAY_SECS", &base_delay, 1)),
            max_delay: Duration::from_secs(number("PORTCULLIS_LOGIN_MAX_DELAY_SECS", &max_delay, 1)),
            max_concurrent_verifications: number("PORTCULLIS_LOGIN_CONCURRENCY", &verifications, 1) as usize,
        };
        let mut media = MediaSettings {
            allowed_hosts: None,
            allowed_networks: Vec::new(),
            max_bytes: number("PORTCULLIS_MEDIA_MAX_BYTES", &media_max, 1),
            connect_timeout: Duration::from_secs(number("PORTCULLIS_MEDIA_CONNECT_TIMEOUT_SECS", &media_connect, 1)),
            read_timeout: Duration::from_secs(number("PORTCULLIS_MEDIA_READ_TIMEOUT_SECS", &media_read, 1)),
            total_timeout: Duration::from_secs(number("PORTCULLIS_MEDIA_TIMEOUT_SECS", &media_total, 1)),
            extra_roots_pem: None,
        };
        let hosts: Vec<String> =
            media_hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_ascii_lowercase).collect();
        for host in &hosts {
            let name = host.strip_prefix("*.").unwrap_or(host);
            if name.is_empty()
                || !name
                    .split('.')
                    .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            {
                errors.push(SettingError {
                    variable: "PORTCULLIS_MEDIA_HOSTS",
                    reason: format!("{host:?} is not a host name or *.domain"),
                });
            }
        }
        media.allowed_hosts = (!hosts.is_empty()).then_some(hosts);
        for network in media_networks.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match network.parse::<ipnet::IpNet>() {
                Ok(net) => media.allowed_networks.push(net.trunc()),
                Err(_) => errors.push(SettingError {
                    variable: "PORTCULLIS_MEDIA_ALLOW_NETWORKS",
                    reason: format!("{network:?} is not a network in CIDR notation (10.1.2.0/24, fd00::/64)"),
                }),
            }
        }
        if !media_ca.is_empty() {
            match std::fs::read(&media_ca) {
                Ok(pem) if reqwest::Certificate::from_pem_bundle(&pem).is_ok_and(|certs| !certs.is_empty()) => {
                    media.extra_roots_pem = Some(pem);
                }
                Ok(_) => errors.push(SettingError {
                    variable: "PORTCULLIS_MEDIA_CA_FILE",
                    reason: format!("{media_ca}: no PEM certificate in it"),
                }),
                Err(e) => errors
                    .push(SettingError { variable: "PORTCULLIS_MEDIA_CA_FILE", reason: format!("{media_ca}: {e}") }),
            }
        }

        let mut address = |variable: &'static str, text: &str| -> Option<SocketAddr> {
            match text.parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    errors
                        .push(SettingError { variable, reason: format!("{text:?} is not host:port (an IP address)") });
                    None
                }
            }
        };
        let listen = address("PORTCULLIS_LISTEN", &listen);
        let plain_listen =
            if plain_listen.is_empty() { None } else { address("PORTCULLIS_PLAIN_LISTEN", &plain_listen) };

        let policy_json = if policy_file.is_empty() {
            policy_inline
        } else {
            std::fs::read_to_string(&policy_file).unwrap_or_else(|e| {
                errors.push(SettingError { variable: "PORTCULLIS_POLICY_FILE", reason: format!("{policy_file}: {e}") });
                String::new()
            })
        };
        let mut cors_origins = Vec::new();
        for origin in cors.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            match parse_cors_origin(origin) {
                Ok(origin) => cors_origins.push(origin),
                Err(reason) => errors.push(SettingError { variable: "PORTCULLIS_CORS_ORIGINS", reason }),
            }
        }

        let redis = if redis_urls.is_empty() {
            None
        } else {
            portcullis_ratelimit::store::Target::from_urls(&[redis_urls], false)
                .map_err(|reason| errors.push(SettingError { variable: "PORTCULLIS_REDIS_URL", reason }))
                .ok()
        };
        let redis_timeout = match redis_timeout_ms.trim().parse::<u64>() {
            Ok(ms) if (1..=10_000).contains(&ms) => Duration::from_millis(ms),
            _ => {
                errors.push(SettingError {
                    variable: "PORTCULLIS_REDIS_TIMEOUT_MS",
                    reason: format!("{redis_timeout_ms:?} is not a number of milliseconds between 1 and 10000"),
                });
                Duration::from_millis(50)
            }
        };

        match (errors.is_empty(), listen) {
            (true, Some(listen)) => Ok(Self {
                listen,
                plain_listen,
                tls_cert: tls_cert.into(),
                client_ca: (!client_ca.is_empty()).then(|| client_ca.into()),
                policy_json,
                redis,
                redis_timeout,
                cors_origins,
                jwt_issuer: issuer,
                jwt_audience: audience,
                access_ttl,
                refresh_ttl,
                refresh_grace,
                body_limit,
                request_timeout,
                db_max_connections,
                stt_url: (!stt_url.is_empty()).then_some(stt_url),
                stt_model,
                executor,
                media,
                login,
            }),
            _ => Err(errors),
        }
    }
}

/// A browser origin as the `Origin` header spells it: `https://host[:port]`, or `http://` for a
/// loopback host only (`localhost`, `127.0.0.1`, `[::1]`). Parsed, not prefix-matched, so
/// `http://localhost.evil.com` is not `http://localhost`; returned in its serialised form, which
/// is what browsers send and what CORS compares byte for byte.
pub fn parse_cors_origin(text: &str) -> Result<String, String> {
    let refuse = |why: &str| Err(format!("{text:?} {why} (a wildcard is never allowed with credentials)"));
    if text == "*" {
        return refuse("is a wildcard");
    }
    let Ok(url) = url::Url::parse(text) else { return refuse("is not an origin such as https://app.example") };
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return refuse("is not an origin: it has user info, a query or a fragment");
    }
    if url.path() != "/" || text.ends_with('/') {
        return refuse("is not an origin: it has a path");
    }
    let loopback = matches!(
        url.host(),
        Some(url::Host::Domain("localhost"))
            | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
            | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
    );
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return refuse("is not an https:// origin (http:// only for localhost, 127.0.0.1 or [::1])"),
    }
    Ok(url.origin().ascii_serialization())
}
