//! The one place the origin reads secrets.
//!
//! Each secret is looked up, in order, in HashiCorp Vault (KV v2, when `VAULT_ADDR` is set),
//! in the file named by `NAME_FILE` (Docker and Kubernetes secrets), then in the environment
//! variable `NAME`. Values are held as [`SecretString`]: they never appear in `Debug` output or
//! logs. Start-up fails listing every missing secret and how to provide it.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// A secret the origin may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretSpec {
    pub name: &'static str,
    pub purpose: &'static str,
}

/// Connection URL of the app role (rows only), e.g.
/// `postgres://portcullis_app:…@127.0.0.1:55432/portcullis?sslmode=verify-full&sslrootcert=…`.
pub const DATABASE_URL: SecretSpec =
    SecretSpec { name: "PORTCULLIS_DATABASE_URL", purpose: "PostgreSQL URL of the app role" };
/// Connection URL of the owner role; only `migrate` uses it.
pub const MIGRATION_DATABASE_URL: SecretSpec = SecretSpec {
    name: "PORTCULLIS_MIGRATION_DATABASE_URL",
    purpose: "PostgreSQL URL of the owner role (migrations only)",
};
/// `kid:base64key[,kid:base64key…]`: the first signs, all verify (rotation without logouts).
pub const JWT_KEYS: SecretSpec =
    SecretSpec { name: "PORTCULLIS_JWT_KEYS", purpose: "JWT signing keys, current first, as kid:base64" };
/// Key for pgcrypto column encryption (and, derived from it, the keyed digests).
pub const DATA_KEY: SecretSpec =
    SecretSpec { name: "PORTCULLIS_DATA_KEY", purpose: "data-encryption key for sensitive columns" };
/// PEM private key of the origin's TLS certificate (the value, not a path).
pub const TLS_KEY: SecretSpec =
    SecretSpec { name: "PORTCULLIS_TLS_KEY", purpose: "PEM private key of the TLS certificate" };

/// What `serve` and `check-config` need.
pub const SERVE: [SecretSpec; 4] = [DATABASE_URL, JWT_KEYS, DATA_KEY, TLS_KEY];
/// What `migrate` needs.
pub const MIGRATE: [SecretSpec; 1] = [MIGRATION_DATABASE_URL];

/// Where the process environment comes from (a map in tests).
pub trait Environment: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Resolved secrets by name.
pub struct Secrets {
    values: BTreeMap<&'static str, (SecretString, Source)>,
}

/// Where a secret was found (safe to log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Vault,
    File,
    Environment,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, (_, source)) in &self.values {
            map.entry(name, &format_args!("[REDACTED from {source:?}]"));
        }
        map.finish()
    }
}

impl Secrets {
    /// The secret `spec`; present for every spec it was loaded with.
    pub fn get(&self, spec: SecretSpec) -> Option<&SecretString> {
        self.values.get(spec.name).map(|(value, _)| value)
    }

    pub fn source(&self, spec: SecretSpec) -> Option<Source> {
        self.values.get(spec.name).map(|(_, source)| *source)
    }

    /// Loads `specs`, failing with every problem at once.
    pub async fn load(specs: &[SecretSpec], env: &dyn Environment) -> Result<Self, SecretsError> {
        let vault = match VaultSettings::from_env(env)? {
            Some(settings) => Some(settings.fetch().await?),
            None => None,
        };
        let mut values = BTreeMap::new();
        let mut problems = Vec::new();
        for spec in specs {
            match lookup(*spec, vault.as_ref(), env) {
                Ok(Some(found)) => {
                    values.insert(spec.name, found);
                }
                Ok(None) => problems.push(Problem::Missing(*spec, vault.as_ref().map(|v| v.location.clone()))),
                Err(problem) => problems.push(problem),
            }
        }
        if problems.is_empty() { Ok(Self { values }) } else { Err(SecretsError::Problems(problems)) }
    }
}

fn lookup(
    spec: SecretSpec,
    vault: Option<&VaultSecrets>,
    env: &dyn Environment,
) -> Result<Option<(SecretString, Source)>, Problem> {
    if let Some(value) = vault.and_then(|v| v.values.get(spec.name)) {
        return Ok(Some((SecretString::from(value.clone()), Source::Vault)));
    }
    let file_var = format!("{}_FILE", spec.name);
    if let Some(path) = env.var(&file_var) {
        let text =
            std::fs::read_to_string(&path).map_err(|err| Problem::Unreadable(spec, path.clone(), err.to_string()))?;
        // Secret files conventionally end with a newline that is not part of the value.
        let value = text.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&text);
        if value.is_empty() {
            return Err(Problem::Empty(spec, file_var));
        }
        return Ok(Some((SecretString::from(value.to_owned()), Source::File)));
    }
    match env.var(spec.name) {
        Some(value) if value.is_empty() => Err(Problem::Empty(spec, spec.name.to_owned())),
        Some(value) => Ok(Some((SecretString::from(value), Source::Environment))),
        None => Ok(None),
    }
}

/// One thing wrong with the secrets.
#[derive(Debug)]
pub enum Problem {
    /// Not found anywhere; carries the Vault location consulted, if any.
    Missing(SecretSpec, Option<String>),
    Unreadable(SecretSpec, String, String),
    Empty(SecretSpec, String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(spec, vault) => {
                write!(f, "{} ({}) is missing: set {0}, or {0}_FILE to a file holding it", spec.name, spec.purpose)?;
                match vault {
                    Some(location) => write!(f, ", or add key {} at Vault {location}", spec.name),
                    None => write!(f, ", or configure Vault (VAULT_ADDR) with key {}", spec.name),
                }
            }
            Self::Unreadable(spec, path, err) => {
                write!(f, "{}_FILE names {path}, which cannot be read: {err}", spec.name)
            }
            Self::Empty(spec, variable) => write!(f, "{} is empty (from {variable})", spec.name),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{}", .0.iter().map(|p| format!("- {p}")).collect::<Vec<_>>().join("\n"))]
    Problems(Vec<Problem>),
    #[error("Vault: {0}")]
    Vault(String),
}

/// How to reach Vault, from `VAULT_*` variables.
struct VaultSettings {
    address: String,
    mount: String,
    path: String,
    namespace: Option<String>,
    auth: VaultAuth,
}

enum VaultAuth {
    Token(SecretString),
    AppRole { role_id: String, secret_id: SecretString },
}

struct VaultSecrets {
    values: BTreeMap<String, String>,
    location: String,
}

fn env_or_file(env: &dyn Environment, name: &str) -> Result<Option<String>, SecretsError> {
    if let Some(path) = env.var(&format!("{name}_FILE")) {
        let text =
            std::fs::read_to_string(&path).map_err(|e| SecretsError::Vault(format!("{name}_FILE ({path}): {e}")))?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
    }
    Ok(env.var(name).filter(|v| !v.is_empty()))
}

impl VaultSettings {
    fn from_env(env: &dyn Environment) -> Result<Option<Self>, SecretsError> {
        let Some(address) = env.var("VAULT_ADDR").filter(|a| !a.is_empty()) else { return Ok(None) };
        let auth = if let Some(token) = env_or_file(env, "VAULT_TOKEN")? {
            VaultAuth::Token(SecretString::from(token))
        } else {
            match (env_or_file(env, "VAULT_ROLE_ID")?, env_or_file(env, "VAULT_SECRET_ID")?) {
                (Some(role_id), Some(secret_id)) => {
                    VaultAuth::AppRole { role_id, secret_id: SecretString::from(secret_id) }
                }
                _ => {
                    return Err(SecretsError::Vault(
                        "VAULT_ADDR is set but there are no credentials: set VAULT_TOKEN (or VAULT_TOKEN_FILE), \
                         or VAULT_ROLE_ID and VAULT_SECRET_ID (or their _FILE forms) for AppRole"
                            .into(),
                    ));
                }
            }
        };
        Ok(Some(Self {
            address: address.trim_end_matches('/').to_owned(),
            mount: env.var("VAULT_KV_MOUNT").unwrap_or_else(|| "secret".into()),
            path: env.var("VAULT_KV_PATH").unwrap_or_else(|| "portcullis".into()),
            namespace: env.var("VAULT_NAMESPACE"),
            auth,
        }))
    }

    async fn fetch(self) -> Result<VaultSecrets, SecretsError> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| SecretsError::Vault(e.to_string()))?;
        let with_namespace = |request: reqwest::RequestBuilder| match &self.namespace {
            Some(ns) => request.header("X-Vault-Namespace", ns),
            None => request,
        };
        let token = match &self.auth {
            VaultAuth::Token(token) => token.clone(),
            VaultAuth::AppRole { role_id, secret_id } => {
                #[derive(Deserialize)]
                struct Login {
                    auth: LoginAuth,
                }
                #[derive(Deserialize)]
                struct LoginAuth {
                    client_token: String,
                }
                let url = format!("{}/v1/auth/approle/login", self.address);
                let body = serde_json::json!({ "role_id": role_id, "secret_id": secret_id.expose_secret() });
                let response = with_namespace(client.post(&url).json(&body))
                    .send()
                    .await
                    .map_err(|e| SecretsError::Vault(format!("AppRole login at {url}: {e}")))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(SecretsError::Vault(format!("AppRole login at {url} answered {status}")));
                }
                let login: Login = response
                    .json()
                    .await
                    .map_err(|e| SecretsError::Vault(format!("AppRole login at {url}: unexpected answer: {e}")))?;
                SecretString::from(login.auth.client_token)
            }
        };

        #[derive(Deserialize)]
        struct Read {
            data: ReadData,
        }
        #[derive(Deserialize)]
        struct ReadData {
            data: BTreeMap<String, serde_json::Value>,
        }
        let location = format!("{}/{}", self.mount, self.path);
        let url = format!("{}/v1/{}/data/{}", self.address, self.mount, self.path);
        let response = with_namespace(client.get(&url).header("X-Vault-Token", token.expose_secret()))
            .send()
            .await
            .map_err(|e| SecretsError::Vault(format!("reading {url}: {e}")))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(VaultSecrets { values: BTreeMap::new(), location });
        }
        if !status.is_success() {
            return Err(SecretsError::Vault(format!("reading {url} answered {status}")));
        }
        let read: Read = response
            .json()
            .await
            .map_err(|e| SecretsError::Vault(format!("reading {url}: not a KV v2 answer: {e}")))?;
        let values = read
            .data
            .data
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                _ => None,
            })
            .collect();
        Ok(VaultSecrets { values, location })
    }
}
