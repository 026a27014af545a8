//! Settings from the environment, JWT key lists and the TLS configuration: defaults, every
//! override, and an error naming the variable for every way each can be wrong.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use portcullis_origin::auth::JwtKeys;
use portcullis_origin::configuration::{DEFAULT_POLICY, Settings};
use portcullis_origin::secrets::{Environment, ProcessEnvironment};
use portcullis_origin::tls;
use secrecy::SecretString;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Every error of `pairs`, as `variable: reason` lines.
fn errors(pairs: &[(&str, &str)]) -> Vec<String> {
    Settings::from_env(&env(pairs)).expect_err("invalid settings").iter().map(ToString::to_string).collect()
}

#[test]
fn defaults_match_the_local_stack() {
    let s = Settings::from_env(&env(&[])).unwrap();
    assert_eq!(s.listen, "127.0.0.1:9443".parse().unwrap());
    assert_eq!(s.plain_listen, None);
    assert_eq!(s.tls_cert, PathBuf::from(".portcullis/certs/origin.crt"));
    assert_eq!(s.client_ca, None);
    assert_eq!(s.policy_json, DEFAULT_POLICY);
    assert!(s.cors_origins.is_empty());
    assert_eq!((s.jwt_issuer.as_str(), s.jwt_audience.as_str()), ("portcullis", "portcullis-api"));
    assert_eq!((s.access_ttl, s.refresh_ttl), (Duration::from_secs(900), Duration::from_secs(1_209_600)));
    assert_eq!(s.refresh_grace, Duration::from_secs(10));
    assert_eq!((s.body_limit, s.request_timeout), (65_536, Duration::from_secs(30)));
    assert_eq!(s.db_max_connections, 10);
    assert_eq!((s.stt_url, s.stt_model.as_str()), (None, "whisper-1"));
    assert_eq!(s.executor.poll, Duration::from_secs(1));
    assert_eq!(
        (s.executor.concurrency, s.executor.lease, s.executor.max_attempts, s.executor.job_timeout),
        (4, Duration::from_secs(30), 3, Duration::from_secs(600))
    );
    assert_eq!((s.media.allowed_hosts, s.media.allowed_networks, s.media.max_bytes), (None, vec![], 26_214_400));
    assert_eq!(
        (s.media.connect_timeout, s.media.read_timeout, s.media.total_timeout),
        (Duration::from_secs(5), Duration::from_secs(15), Duration::from_secs(120))
    );
    assert_eq!(
        (s.login.free_failures, s.login.base_delay, s.login.max_delay),
        (5, Duration::from_secs(1), Duration::from_secs(60))
    );
    assert!(s.login.max_concurrent_verifications >= 1);
    assert_eq!((s.redis, s.redis_timeout), (None, Duration::from_millis(50)));
}

#[test]
fn shared_limit_settings_are_parsed_and_named() {
    use portcullis_ratelimit::store::Target;
    let one = Settings::from_env(&env(&[("PORTCULLIS_REDIS_URL", "redis://127.0.0.1:56379")])).unwrap();
    assert_eq!(one.redis, Some(Target::Single("redis://127.0.0.1:56379".into())));
    let seeds = Settings::from_env(&env(&[("PORTCULLIS_REDIS_URL", "redis://a:1, redis://b:2")])).unwrap();
    assert_eq!(seeds.redis, Some(Target::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])));
    let found = errors(&[("PORTCULLIS_REDIS_URL", "http://a"), ("PORTCULLIS_REDIS_TIMEOUT_MS", "0")]);
    assert!(found.iter().any(|e| e.starts_with("PORTCULLIS_REDIS_URL: \"http://a\" is not a redis://")), "{found:?}");
    assert!(found.iter().any(|e| e.starts_with("PORTCULLIS_REDIS_TIMEOUT_MS:")), "{found:?}");
}

#[test]
fn every_setting_can_be_overridden_and_blank_means_default() {
    let s = Settings::from_env(&env(&[
        ("PORTCULLIS_LISTEN", "0.0.0.0:8443"),
        ("PORTCULLIS_PLAIN_LISTEN", "[::1]:8081"),
        ("PORTCULLIS_TLS_CERT", "/etc/portcullis/tls.crt"),
        ("PORTCULLIS_CLIENT_CA", "/etc/portcullis/envoy-ca.crt"),
        ("PORTCULLIS_POLICY", r#"{"preset": "strict"}"#),
        ("PORTCULLIS_CORS_ORIGINS", " https://a.example ,,http://localhost:5173 "),
        ("PORTCULLIS_JWT_ISSUER", "iss"),
        ("PORTCULLIS_JWT_AUDIENCE", "aud"),
        ("PORTCULLIS_ACCESS_TTL_SECS", "60"),
        ("PORTCULLIS_REFRESH_TTL_SECS", " 3600 "),
        ("PORTCULLIS_REFRESH_GRACE_SECS", "0"),
        ("PORTCULLIS_BODY_LIMIT_BYTES", "1024"),
        ("PORTCULLIS_REQUEST_TIMEOUT_SECS", "5"),
        ("PORTCULLIS_DB_MAX_CONNECTIONS", "2"),
        ("PORTCULLIS_STT_URL", "https://stt.example"),
        ("PORTCULLIS_STT_MODEL", "large-v3"),
        ("PORTCULLIS_JOB_POLL_MILLIS", "10"),
        ("PORTCULLIS_JOB_CONCURRENCY", "2"),
        ("PORTCULLIS_JOB_LEASE_SECS", "5"),
        ("PORTCULLIS_JOB_MAX_ATTEMPTS", "7"),
        ("PORTCULLIS_JOB_TIMEOUT_SECS", "60"),
        ("PORTCULLIS_MEDIA_HOSTS", "Media.Example, *.cdn.example"),
        ("PORTCULLIS_MEDIA_ALLOW_NETWORKS", "10.1.2.3/24, fd00::/64"),
        ("PORTCULLIS_MEDIA_MAX_BYTES", "1000"),
        ("PORTCULLIS_MEDIA_CONNECT_TIMEOUT_SECS", "1"),
        ("PORTCULLIS_MEDIA_READ_TIMEOUT_SECS", "2"),
        ("PORTCULLIS_MEDIA_TIMEOUT_SECS", "3"),
        ("PORTCULLIS_LOGIN_FREE_FAILURES", "3"),
        ("PORTCULLIS_LOGIN_BASE_DELAY_SECS", "2"),
        ("PORTCULLIS_LOGIN_MAX_DELAY_SECS", "900"),
        ("PORTCULLIS_LOGIN_CONCURRENCY", "8"),
        ("PORTCULLIS_JWT_KEYS", "ignored: secrets are not settings"),
    ]))
    .unwrap();
    assert_eq!(s.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(s.plain_listen, Some("[::1]:8081".parse().unwrap()));
    assert_eq!(s.tls_cert, PathBuf::from("/etc/portcullis/tls.crt"));
    assert_eq!(s.client_ca, Some(PathBuf::from("/etc/portcullis/envoy-ca.crt")));
    assert_eq!(s.policy_json, r#"{"preset": "strict"}"#);
    assert_eq!(s.cors_origins, ["https://a.example", "http://localhost:5173"]);
    assert_eq!((s.jwt_issuer.as_str(), s.jwt_audience.as_str()), ("iss", "aud"));
    assert_eq!(
        (s.access_ttl, s.refresh_ttl, s.refresh_grace),
        (Duration::from_secs(60), Duration::from_secs(3600), Duration::ZERO)
    );
    assert_eq!((s.body_limit, s.request_timeout, s.db_max_connections), (1024, Duration::from_secs(5), 2));
    assert_eq!((s.stt_url.as_deref(), s.stt_model.as_str()), (Some("https://stt.example"), "large-v3"));
    assert_eq!(s.executor.poll, Duration::from_millis(10));
    assert_eq!(
        (s.executor.concurrency, s.executor.lease, s.executor.max_attempts, s.executor.job_timeout),
        (2, Duration::from_secs(5), 7, Duration::from_secs(60))
    );
    assert_eq!(s.media.allowed_hosts, Some(vec!["media.example".to_owned(), "*.cdn.example".to_owned()]));
    let networks: Vec<String> = s.media.allowed_networks.iter().map(ToString::to_string).collect();
    assert_eq!(networks, ["10.1.2.0/24", "fd00::/64"]);
    assert_eq!(
        (s.media.max_bytes, s.media.connect_timeout, s.media.read_timeout, s.media.total_timeout),
        (1000, Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(3))
    );
    assert_eq!(
        (s.login.free_failures, s.login.base_delay, s.login.max_delay, s.login.max_concurrent_verifications),
        (3, Duration::from_secs(2), Duration::from_secs(900), 8)
    );

    let blank = Settings::from_env(&env(&[("PORTCULLIS_LISTEN", "  "), ("PORTCULLIS_STT_MODEL", "")])).unwrap();
    assert_eq!((blank.listen.port(), blank.stt_model.as_str()), (9443, "whisper-1"));
}

#[test]
fn every_bad_number_is_named_with_its_minimum() {
    let found = errors(&[
        ("PORTCULLIS_ACCESS_TTL_SECS", "0"),
        ("PORTCULLIS_REFRESH_TTL_SECS", "two weeks"),
        ("PORTCULLIS_REFRESH_GRACE_SECS", "-1"),
        ("PORTCULLIS_BODY_LIMIT_BYTES", "1023"),
        ("PORTCULLIS_REQUEST_TIMEOUT_SECS", "1.5"),
        ("PORTCULLIS_DB_MAX_CONNECTIONS", "0"),
        ("PORTCULLIS_JOB_POLL_MILLIS", "9"),
    ]);
    assert_eq!(
        found,
        [
            "PORTCULLIS_ACCESS_TTL_SECS: \"0\" is not a whole number ≥ 1",
            "PORTCULLIS_REFRESH_TTL_SECS: \"two weeks\" is not a whole number ≥ 1",
            "PORTCULLIS_REFRESH_GRACE_SECS: \"-1\" is not a whole number ≥ 0",
            "PORTCULLIS_BODY_LIMIT_BYTES: \"1023\" is not a whole number ≥ 1024",
            "PORTCULLIS_REQUEST_TIMEOUT_SECS: \"1.5\" is not a whole number ≥ 1",
            "PORTCULLIS_DB_MAX_CONNECTIONS: \"0\" is not a whole number ≥ 1",
            "PORTCULLIS_JOB_POLL_MILLIS: \"9\" is not a whole number ≥ 10",
        ]
    );
}

#[test]
fn addresses_policy_files_and_cors_origins_are_checked() {
    let found = errors(&[
        ("PORTCULLIS_LISTEN", "localhost:9443"),
        ("PORTCULLIS_PLAIN_LISTEN", "8080"),
        ("PORTCULLIS_POLICY_FILE", "/nonexistent/policy.json"),
        ("PORTCULLIS_CORS_ORIGINS", "https://ok.example,*,http://app.example"),
    ]);
    assert_eq!(found.len(), 5, "{found:#?}");
    assert_eq!(found[0], "PORTCULLIS_LISTEN: \"localhost:9443\" is not host:port (an IP address)");
    assert_eq!(found[1], "PORTCULLIS_PLAIN_LISTEN: \"8080\" is not host:port (an IP address)");
    assert!(found[2].starts_with("PORTCULLIS_POLICY_FILE: /nonexistent/policy.json: "), "{}", found[2]);
    assert_eq!(found[3], "PORTCULLIS_CORS_ORIGINS: \"*\" is a wildcard (a wildcard is never allowed with credentials)");
    assert!(found[4].starts_with("PORTCULLIS_CORS_ORIGINS: \"http://app.example\""), "{}", found[4]);

    // A good listen address does not hide another setting's error.
    assert_eq!(errors(&[("PORTCULLIS_CORS_ORIGINS", "*")]).len(), 1);
}

#[test]
fn cors_origins_are_parsed_not_prefix_matched() {
    let origins = |text: &str| Settings::from_env(&env(&[("PORTCULLIS_CORS_ORIGINS", text)])).map(|s| s.cors_origins);
    assert_eq!(
        origins("https://App.Example:443, http://localhost:5173, http://127.0.0.1:8080, http://[::1]:3000").unwrap(),
        ["https://app.example", "http://localhost:5173", "http://127.0.0.1:8080", "http://[::1]:3000"],
        "in the serialised form browsers send"
    );
    for bad in [
        "http://localhost.evil.com",
        "http://localhost@evil.com",
        "http://127.0.0.1.evil.com",
        "https://app.example/path",
        "https://app.example/",
        "https://user@app.example",
        "https://app.example?x",
        "ftp://app.example",
        "app.example",
        "http://app.example",
    ] {
        let found = errors(&[("PORTCULLIS_CORS_ORIGINS", bad)]);
        assert_eq!(found.len(), 1, "{bad}: {found:?}");
        assert!(found[0].starts_with(&format!("PORTCULLIS_CORS_ORIGINS: {bad:?} ")), "{}", found[0]);
    }
}

#[test]
fn media_and_job_settings_name_the_bad_variable() {
    let found = errors(&[
        ("PORTCULLIS_MEDIA_HOSTS", "ok.example, bad host, *."),
        ("PORTCULLIS_MEDIA_ALLOW_NETWORKS", "10.0.0.0/33"),
        ("PORTCULLIS_MEDIA_CA_FILE", "/nonexistent/ca.pem"),
        ("PORTCULLIS_MEDIA_MAX_BYTES", "0"),
        ("PORTCULLIS_JOB_CONCURRENCY", "0"),
        ("PORTCULLIS_JOB_MAX_ATTEMPTS", "none"),
        ("PORTCULLIS_LOGIN_CONCURRENCY", "0"),
    ]);
    let variables: Vec<&str> = found.iter().map(|e| e.split(':').next().unwrap()).collect();
    assert_eq!(
        variables,
        [
            "PORTCULLIS_JOB_CONCURRENCY",
            "PORTCULLIS_JOB_MAX_ATTEMPTS",
            "PORTCULLIS_LOGIN_CONCURRENCY",
            "PORTCULLIS_MEDIA_MAX_BYTES",
            "PORTCULLIS_MEDIA_HOSTS",
            "PORTCULLIS_MEDIA_HOSTS",
            "PORTCULLIS_MEDIA_ALLOW_NETWORKS",
            "PORTCULLIS_MEDIA_CA_FILE",
        ],
        "{found:#?}"
    );
    let not_pem = std::env::temp_dir().join(format!("portcullis-not-pem-{}", std::process::id()));
    std::fs::write(&not_pem, "hello").unwrap();
    let found = errors(&[("PORTCULLIS_MEDIA_CA_FILE", not_pem.to_str().unwrap())]);
    assert_eq!(found, [format!("PORTCULLIS_MEDIA_CA_FILE: {}: no PEM certificate in it", not_pem.display())]);
    std::fs::remove_file(&not_pem).unwrap();
}

#[test]
fn the_process_environment_is_the_real_one() {
    assert_eq!(ProcessEnvironment.var("PATH"), std::env::var("PATH").ok());
    assert_eq!(ProcessEnvironment.var("PORTCULLIS_SURELY_UNSET_VARIABLE"), None);
}

fn jwt(spec: &str) -> Result<JwtKeys, String> {
    JwtKeys::parse(&SecretString::from(spec.to_owned()), "portcullis", "portcullis-api")
}

#[test]
fn jwt_key_lists_are_checked_entry_by_entry() {
    let key = "A".repeat(44); // 33 bytes, just over the minimum
    assert!(jwt(&format!("current:{key}, previous_1:{key}")).is_ok());
    let cases = [
        (String::new(), "no keys"),
        (" , ".to_owned(), "no keys"),
        ("no-colon".to_owned(), "key 0 is not kid:base64"),
        (format!(":{key}"), "key 0: kid must be [A-Za-z0-9_-]+"),
        (format!("k1:{key},bad kid:{key}"), "key 1: kid must be [A-Za-z0-9_-]+"),
        ("k1:not base64!".to_owned(), "key k1: not base64"),
        ("k1:c2hvcnQ=".to_owned(), "key k1: 5 bytes, at least 32 needed"),
        (format!("k1:{key},k1:{key}"), "key k1: kid used twice"),
    ];
    for (spec, expected) in cases {
        assert_eq!(jwt(&spec).err().as_deref(), Some(expected), "{spec:?}");
    }
}

fn key_pem() -> SecretString {
    SecretString::from(std::fs::read_to_string(support::certs().join("origin.key")).unwrap())
}

#[test]
fn tls_configuration_errors_name_the_file_or_secret() {
    let certs = support::certs();
    let ok = tls::server_config(&certs.join("origin.crt"), &key_pem(), None).unwrap();
    assert_eq!(ok.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    let mtls = tls::server_config(&certs.join("origin.crt"), &key_pem(), Some(&certs.join("ca.crt")));
    assert!(mtls.is_ok(), "{:?}", mtls.err());

    let missing = tls::server_config(&PathBuf::from("/nonexistent/origin.crt"), &key_pem(), None).unwrap_err();
    assert!(missing.starts_with("/nonexistent/origin.crt: "), "{missing}");

    let dir = std::env::temp_dir().join(format!("portcullis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.crt");
    std::fs::write(&empty, "no PEM here\n").unwrap();
    let err = tls::server_config(&empty, &key_pem(), None).unwrap_err();
    assert_eq!(err, format!("{}: no certificate found", empty.display()));
    let err = tls::server_config(&certs.join("origin.crt"), &key_pem(), Some(&empty)).unwrap_err();
    assert_eq!(err, format!("{}: no certificate found", empty.display()), "an empty client CA file");

    let err =
        tls::server_config(&certs.join("origin.crt"), &SecretString::from("garbage".to_owned()), None).unwrap_err();
    assert_eq!(err, "PORTCULLIS_TLS_KEY: no PEM private key found");
    // A key that is not the certificate's.
    let other = SecretString::from(std::fs::read_to_string(certs.join("envoy.key")).unwrap());
    let err = tls::server_config(&certs.join("origin.crt"), &other, None).unwrap_err();
    assert!(err.starts_with("certificate and key: "), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `.env.example` is where users look for settings: every variable this module reads is there.
#[test]
fn every_setting_is_listed_in_the_env_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/configuration.rs")).unwrap();
    let example = std::fs::read_to_string(root.join("../.env.example")).unwrap();
    let listed: Vec<&str> = example.lines().filter_map(|l| l.strip_suffix('=')).collect();
    let read: std::collections::BTreeSet<&str> = source
        .split('"')
        .filter(|s| s.starts_with("PORTCULLIS_") && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .collect();
    assert!(read.len() > 30, "found the settings: {read:?}");
    for variable in read {
        assert!(listed.contains(&variable), "{variable} is read but not listed in .env.example");
    }
}
