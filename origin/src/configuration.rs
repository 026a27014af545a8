//! Settings that are not secret, from `PORTCULLIS_*` environment variables with defaults that
//! match the local stack. Secrets come from [`crate::secrets`] only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// How often the job executor looks for due jobs.
    pub job_poll: Duration,
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
        let poll = parse("PORTCULLIS_JOB_POLL_MILLIS", "1000");

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
        let job_poll = Duration::from_millis(number("PORTCULLIS_JOB_POLL_MILLIS", &poll, 10));

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
        let cors_origins: Vec<String> =
            cors.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect();
        for origin in &cors_origins {
            if origin == "*" || !(origin.starts_with("https://") || origin.starts_with("http://localhost")) {
                errors.push(SettingError {
                    variable: "PORTCULLIS_CORS_ORIGINS",
                    reason: format!(
                        "{origin:?} is not an https:// origin (a wildcard is never allowed with credentials)"
                    ),
                });
            }
        }

        match (errors.is_empty(), listen) {
            (true, Some(listen)) => Ok(Self {
                listen,
                plain_listen,
                tls_cert: tls_cert.into(),
                client_ca: (!client_ca.is_empty()).then(|| client_ca.into()),
                policy_json,
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
                job_poll,
            }),
            _ => Err(errors),
        }
    }
}
