//! The built filter under the wasmtime host, on arbitrary requests and upstream answers: the VM
//! never traps, panics or logs an error; every request is forwarded (with the upstream's status)
//! or answered locally with one of the filter's statuses; no header value the filter writes
//! could split or smuggle a field; every response carries the policy's security headers; and
//! whatever the clock does, no client is told to wait longer than its tier's window.
//!
//! `cargo xtask fuzz` builds the filter and runs this; by hand, from this directory:
//! `PORTCULLIS_FILTER_WASM=<built .wasm> RUSTC_BOOTSTRAP=1 cargo fuzz run -s none filter`, and
//! `PORTCULLIS_FUZZ_VERBOSE=1` with a file instead of a corpus shows what that input does.
//!
//! VMs live as long as the fuzzing process (instantiating per input would dominate the run), two
//! workers per policy sharing one host, so rate-limit buckets fill, collide and age across
//! inputs. Each input also moves the host clock. The VMs are replaced every few thousand
//! requests, so the fresh-start path stays exercised too.
//!
//! Sanitizer coverage cannot see into the Cranelift-compiled filter, so what the filter did
//! (outcome, status, headers it set, instructions spent per phase, log lines) is reported to
//! libFuzzer as extra counters: an input that makes the filter behave differently is kept.
#![no_main]

use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use wasm_tests::{Exchange, FilterModule, Host, HttpRequest, Plugin, Response, START_NANOS};

/// One deployment's policy and what it promises about every response.
struct PolicyCase {
    json: &'static str,
    /// Headers every response carries exactly once, with exactly this value (HSTS apart: see
    /// `hsts`). The presets are the core's; its own tests pin them to the audited values.
    required: &'static [(&'static str, &'static str)],
    /// On every response to a TLS connection; never over plain HTTP unless a forwarding header
    /// could have vouched for HTTPS.
    hsts: &'static str,
    /// Never on a response, whatever the upstream sent.
    removed: &'static [&'static str],
    /// Authorities the policy admits, for the fuzzer to start from.
    hosts: &'static [&'static str],
}

const SEED_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'";
const HSTS: &str = "max-age=31536000; includeSubDomains; preload";

const POLICIES: [PolicyCase; 3] = [
    // envoy.yaml's policy, with a limiter table small enough that a run fills and evicts buckets.
    PolicyCase {
        json: r#"{
            "preset": "seed",
            "allowed_hosts": ["localhost", "127.0.0.1"],
            "https_redirect": { "https_port": 8443 },
            "limiter": { "capacity_per_tier": 64 }
        }"#,
        required: portcullis_core::SEED_HEADERS,
        hsts: HSTS,
        removed: &["x-powered-by"],
        hosts: &["localhost", "127.0.0.1", "LocalHost."],
    },
    // Behind a load balancer: strict preset, RFC 7239 forwarding from a private range, own tiers
    // (one in shadow mode), a profile, a keyed limiter that refuses when its store fails.
    PolicyCase {
        json: r#"{
            "preset": "strict",
            "allowed_hosts": ["api.example.com", "*.example.com"],
            "remove_headers": ["X-Powered-By", "X-AspNet-Version"],
            "profiles": [{ "path_prefix": "/api/v1/auth", "headers": { "Cache-Control": "no-store, max-age=0" } }],
            "https_redirect": { "https_port": 443, "exempt_prefixes": ["/.well-known/acme-challenge/", "/healthz"] },
            "client_ip": { "trusted_proxies": ["10.0.0.0/8", "fd00::/8"], "forwarded_header": "forwarded", "ipv6_prefix": 56 },
            "rate_limits": [
                { "name": "login", "method": "POST", "path": "/api/v1/auth/login", "limit": "3/minute" },
                { "name": "jobs", "method": "*", "path": "/api/v1/jobs/{job_id}", "limit": "20/second", "mode": "shadow" },
                { "name": "videos", "method": "GET", "path": "/api/v1/videos", "limit": "100/hour" },
                { "name": "health", "method": "GET", "path": "/api/v1/health", "limit": "unlimited" },
                { "name": "daily", "method": "POST", "path": "/api/v1/{action}", "limit": "1000/day" }
            ],
            "limiter": { "capacity_per_tier": 32, "max_cas_retries": 2, "on_store_error": "deny", "hash_key": "000102030405060708090a0b0c0d0e0f" }
        }"#,
        required: portcullis_core::STRICT_HEADERS,
        hsts: HSTS,
        removed: &["x-powered-by", "x-aspnet-version"],
        hosts: &["api.example.com", "eu.api.example.com", "API.EXAMPLE.COM:443"],
    },
    // Any host (so arbitrary authorities reach the redirect's Location), every peer trusted,
    // header overrides, shadow limiting without headers on success, a tiny table.
    PolicyCase {
        json: r#"{
            "headers": {
                "X-XSS-Protection": "0",
                "Permissions-Policy": null,
                "Strict-Transport-Security": "max-age=63072000",
                "Cross-Origin-Opener-Policy": "same-origin"
            },
            "allowed_hosts": ["*"],
            "https_redirect": { "https_port": 8443 },
            "client_ip": { "trusted_proxies": ["0.0.0.0/0"], "trusted_hops": 2 },
            "rate_limit_mode": "shadow",
            "rate_limit_headers_on_success": false,
            "limiter": { "capacity_per_tier": 4, "max_cas_retries": 0 }
        }"#,
        required: &[
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("x-xss-protection", "0"),
            ("content-security-policy", SEED_CSP),
            ("referrer-policy", "strict-origin-when-cross-origin"),
            ("cross-origin-opener-policy", "same-origin"),
            ("server", "Unknown"),
        ],
        hsts: "max-age=63072000",
        // `null` only takes the header out of the profile: the upstream's own value stays.
        removed: &["x-powered-by"],
        hosts: &["localhost", "[2001:db8::1]:8443", "a-b_c.example"],
    },
];

/// Statuses the filter answers with itself: redirects, bad host, rate limited, store failure.
const LOCAL_STATUSES: [u16; 5] = [301, 308, 400, 429, 503];

const PATHS: [&str; 14] = [
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
    "/api/v1/transcribe",
    "/api/v1/videos",
    "/api/v1/analyze",
    "/api/v1/jobs/",
    "/api/v1/schedule",
    "/api/v1/health",
    "/.well-known/acme-challenge/",
    "/healthz",
    "/api/v1/auth",
    "/",
    "/API/V1/Auth/%6c%6F%67%69%6e",
    "//api/./v1/x/../videos;x=1",
];

/// Response header names an edit sets or removes, in spellings an upstream might use.
const MANAGED: [&str; 14] = [
    "x-frame-options",
    "Server",
    "strict-transport-security",
    "X-Powered-By",
    "ratelimit",
    "retry-after",
    "content-security-policy",
    "permissions-policy",
    "x-ratelimit-remaining",
    "cache-control",
    "location",
    "x-aspnet-version",
    "Cross-Origin-Opener-Policy",
    "x-xss-protection",
];

/// Replace the VMs after this many requests on them.
const RECREATE_EVERY: u32 = 5_000;
const MAX_STEPS: usize = 8;

#[derive(Arbitrary, Debug)]
struct Input {
    policy: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
struct Step {
    clock: Clock,
    /// Which of the two workers takes the request.
    second_worker: bool,
    /// Fire the root context's timer (metrics flush) first.
    tick: bool,
    request: Request,
    upstream: Upstream,
}

#[derive(Arbitrary, Debug)]
enum Clock {
    Still,
    AdvanceMillis(u16),
    AdvanceSeconds(u16),
    /// Envoy's clock is the wall clock, which can step back.
    RewindSeconds(u16),
    Jump(u64),
}

#[derive(Arbitrary, Debug)]
struct Request {
    method: Option<Method>,
    authority: Option<Authority>,
    path: Option<Target>,
    scheme: Option<Vec<u8>>,
    tls: bool,
    peer: Option<PeerAddr>,
    headers: Vec<(Name, Value)>,
}

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Head,
    Post,
    Delete,
    Put,
    Options,
    Other(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Authority {
    Allowed(u8, Option<u16>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Target {
    Known(u8, Vec<u8>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum PeerAddr {
    V4([u8; 4], u16),
    /// Inside the trusted ranges of the second policy.
    Private([u8; 3], u16),
    V6([u16; 8], u16),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Name {
    XForwardedFor,
    XForwardedProto,
    Forwarded,
    Host,
    CfConnectingIp,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Https,
    Addresses(Vec<([u8; 4], bool)>),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Upstream {
    status: u16,
    headers: Vec<(UpstreamName, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
enum UpstreamName {
    Managed(u8),
    Other(String),
}

fn pick<T: Copy>(items: &[T], index: u8) -> T {
    items[usize::from(index) % items.len()]
}

impl Request {
    fn build(&self, policy: &PolicyCase, upstream: &Upstream) -> HttpRequest {
        let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(method) = &self.method {
            let bytes: &[u8] = match method {
                Method::Get => b"GET",
                Method::Head => b"HEAD",
                Method::Post => b"POST",
                Method::Delete => b"DELETE",
                Method::Put => b"PUT",
                Method::Options => b"OPTIONS",
                Method::Other(raw) => raw,
            };
            headers.push((":method".into(), bytes.to_vec()));
        }
        if let Some(authority) = &self.authority {
            let bytes = match authority {
                Authority::Allowed(i, None) => pick(policy.hosts, *i).as_bytes().to_vec(),
                Authority::Allowed(i, Some(port)) => format!("{}:{port}", pick(policy.hosts, *i)).into_bytes(),
                Authority::Raw(raw) => raw.clone(),
            };
            headers.push((":authority".into(), bytes));
        }
        if let Some(target) = &self.path {
            let bytes = match target {
                Target::Known(i, suffix) => [pick(&PATHS, *i).as_bytes(), suffix].concat(),
                Target::Raw(raw) => raw.clone(),
            };
            headers.push((":path".into(), bytes));
        }
        if let Some(scheme) = &self.scheme {
            headers.push((":scheme".into(), scheme.clone()));
        }
        for (name, value) in &self.headers {
            let name = match name {
                Name::XForwardedFor => "x-forwarded-for".to_owned(),
                Name::XForwardedProto => "x-forwarded-proto".to_owned(),
                Name::Forwarded => "forwarded".to_owned(),
                Name::Host => "host".to_owned(),
                Name::CfConnectingIp => "cf-connecting-ip".to_owned(),
                Name::Other(name) => name.clone(),
            };
            let value = match value {
                Value::Https => b"https".to_vec(),
                Value::Addresses(chain) => {
                    let rfc7239 = name == "forwarded";
                    let nodes: Vec<String> = chain
                        .iter()
                        .map(|(ip, private)| {
                            let [a, b, c, d] = *ip;
                            let a = if *private { 10 } else { a };
                            if rfc7239 { format!("for={a}.{b}.{c}.{d}") } else { format!("{a}.{b}.{c}.{d}") }
                        })
                        .collect();
                    nodes.join(", ").into_bytes()
                }
                Value::Raw(raw) => raw.clone(),
            };
            headers.push((name, value));
        }
        let peer = self.peer.as_ref().map(|peer| match peer {
            PeerAddr::V4([a, b, c, d], port) => format!("{a}.{b}.{c}.{d}:{port}"),
            PeerAddr::Private([b, c, d], port) => format!("10.{b}.{c}.{d}:{port}"),
            PeerAddr::V6(segments, port) => format!("[{}]:{port}", std::net::Ipv6Addr::from(*segments)),
            PeerAddr::Raw(raw) => raw.clone(),
        });
        HttpRequest { headers, peer, tls: self.tls, upstream: upstream.build() }
    }
}

impl Upstream {
    fn build(&self) -> Response {
        // Envoy's codecs refuse NUL, CR and LF in a field value before any filter sees it.
        let clean = |value: &[u8]| value.iter().copied().filter(|b| !b"\0\r\n".contains(b)).collect::<Vec<u8>>();
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| {
                let name = match name {
                    UpstreamName::Managed(i) => pick(&MANAGED, *i).to_owned(),
                    UpstreamName::Other(name) => name.clone(),
                };
                (name, clean(value))
            })
            .filter(|(name, _)| !name.starts_with(':'))
            .collect();
        Response { status: 100 + self.status % 900, headers, body: b"{}".to_vec() }
    }
}

/// Two workers of one Envoy, one of them modelling a host that does not rerun the response
/// phase over the filter's own replies.
struct Deployment {
    host: Host,
    workers: [Plugin; 2],
    served: u32,
}

impl Deployment {
    fn start(policy: &PolicyCase) -> Self {
        let module = FilterModule::built();
        let host = Host::new();
        let mut no_rerun = host.clone();
        no_rerun.local_reply_through_response_phase = false;
        let configure = |host: &Host| {
            host.plugin(module, policy.json).unwrap_or_else(|e| panic!("the fuzzed policy is rejected: {e:?}"))
        };
        let workers = [configure(&host), configure(&no_rerun)];
        Self { host, workers, served: 0 }
    }
}

thread_local! {
    static DEPLOYMENTS: RefCell<[Option<Deployment>; 3]> = const { RefCell::new([None, None, None]) };
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let index = usize::from(input.policy) % POLICIES.len();
    let policy = &POLICIES[index];
    DEPLOYMENTS.with_borrow_mut(|deployments| {
        let slot = &mut deployments[index];
        if slot.as_ref().is_some_and(|d| d.served >= RECREATE_EVERY) {
            *slot = None;
        }
        let deployment = slot.get_or_insert_with(|| Deployment::start(policy));
        let mut previous = u64::MAX;
        for step in input.steps.iter().take(MAX_STEPS) {
            match step.clock {
                Clock::Still => {}
                Clock::AdvanceMillis(ms) => deployment.host.advance(Duration::from_millis(u64::from(ms))),
                Clock::AdvanceSeconds(s) => deployment.host.advance(Duration::from_secs(u64::from(s))),
                Clock::RewindSeconds(s) => {
                    let now = deployment.host.now_nanos();
                    deployment.host.set_time_nanos(now.saturating_sub(u64::from(s) * 1_000_000_000));
                }
                Clock::Jump(nanos) => deployment.host.set_time_nanos(nanos),
            }
            let worker = &mut deployment.workers[usize::from(step.second_worker)];
            if step.tick {
                worker.tick().unwrap_or_else(|e| panic!("the filter trapped on its timer: {e:?}"));
            }
            let request = step.request.build(policy, &step.upstream);
            let logs_before = worker.logs().len();
            let exchange = match worker.send(&request) {
                Ok(exchange) => exchange,
                Err(e) => panic!(
                    "the filter trapped: {e:?}\nrequest (tls: {}, peer: {:?}):\n{}log: {:?}",
                    request.tls,
                    request.peer,
                    show(&request.headers),
                    worker.logs()
                ),
            };
            let new_logs = &worker.logs()[logs_before..];
            if verbose() {
                let first = |name: &str| request.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.escape_ascii());
                eprintln!(
                    "policy {index}, worker {}: {:?} {:?} {:?} tls={} -> {} {}",
                    usize::from(step.second_worker),
                    first(":method").map(|v| v.to_string()),
                    first(":authority").map(|v| v.to_string()),
                    first(":path").map(|v| v.to_string()),
                    request.tls,
                    exchange.response.status,
                    if exchange.local { "local" } else { "forwarded" },
                );
            }
            check(policy, &request, &exchange, new_logs);
            report(index, previous, &request, &exchange, new_logs);
            previous = outcome(&exchange);
            deployment.served += 1;
        }
        // A jump lasts for the rest of its input only, so most inputs start at a realistic time.
        if !(START_NANOS / 2..START_NANOS * 2).contains(&deployment.host.now_nanos()) {
            deployment.host.set_time_nanos(START_NANOS);
        }
    });
});

/// `PORTCULLIS_FUZZ_VERBOSE=1` prints every exchange, to see what a corpus file or crash does.
fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("PORTCULLIS_FUZZ_VERBOSE").is_some())
}

/// The invariants of one exchange.
fn check(policy: &PolicyCase, request: &HttpRequest, exchange: &Exchange, new_logs: &[(u32, String)]) {
    let response = &exchange.response;
    let status = response.status;
    let context = || {
        format!(
            "request (tls: {}, peer: {:?}):\n{}upstream {}:\n{}response {} ({}):\n{}",
            request.tls,
            request.peer,
            show(&request.headers),
            request.upstream.status,
            show(&request.upstream.headers),
            status,
            if exchange.local { "local" } else { "forwarded" },
            show(&response.headers),
        )
    };
    assert!(new_logs.iter().all(|(level, _)| *level < 4), "the filter logged an error: {new_logs:?}\n{}", context());

    if exchange.local {
        assert!(LOCAL_STATUSES.contains(&status), "local reply with status {status}\n{}", context());
        assert!(exchange.upstream_request.is_none());
        if status == 301 || status == 308 {
            let location = response.header("location").unwrap_or_default();
            assert!(location.starts_with("https://"), "redirect to {location:?}\n{}", context());
        }
        if status == 429 {
            let retry = response.header("retry-after").and_then(|v| v.parse::<u64>().ok());
            assert!(retry.is_some_and(|s| s >= 1), "429 without a usable retry-after\n{}", context());
        }
    } else {
        assert_eq!(status, request.upstream.status, "the filter changed the upstream's status\n{}", context());
        assert!(exchange.upstream_request.is_some());
    }

    for (name, value) in &response.headers {
        assert!(!name.starts_with(':'), "pseudo-header {name:?} left in the response\n{}", context());
        assert!(!value.iter().any(|b| b"\0\r\n".contains(b)), "{name}: {value:?} could split a field\n{}", context());
        let from_upstream = !exchange.local && request.upstream.headers.iter().any(|(n, v)| n == name && v == value);
        if !from_upstream {
            assert!(is_token(name), "the filter wrote the header name {name:?}\n{}", context());
            assert!(is_field_value(value), "the filter wrote {name}: {value:?}\n{}", context());
        }
    }

    for (name, value) in policy.required.iter().filter(|(name, _)| *name != "strict-transport-security") {
        assert_eq!(response.header_count(name), 1, "{name} not exactly once\n{}", context());
        assert_eq!(response.header(name), Some(*value), "{name}\n{}", context());
    }
    for name in policy.removed {
        assert_eq!(response.header_count(name), 0, "{name} survived\n{}", context());
    }
    let hsts = response.header_count("strict-transport-security");
    assert!(hsts <= 1, "HSTS {hsts} times\n{}", context());
    if request.tls {
        assert_eq!(response.header("strict-transport-security"), Some(policy.hsts), "HSTS over TLS\n{}", context());
    } else if !request.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-proto")) {
        assert_eq!(hsts, 0, "HSTS over plain HTTP with nothing claiming HTTPS\n{}", context());
    }
    // Whatever the clock does (Envoy's is the wall clock, which can step back), the filter never
    // asks a client to wait longer than the tier's window.
    let filter_policy = exchange.local || request.upstream.header_count("ratelimit-policy") == 0;
    if let Some(window) = response.header("ratelimit-policy").and_then(window_secs).filter(|_| filter_policy) {
        let secs = |name: &str| response.header(name).and_then(|v| v.parse::<u64>().ok());
        // An upstream's own Retry-After (its 429 or 503) is its to give, and passes unchanged.
        if exchange.local || request.upstream.header_count("retry-after") == 0 {
            let retry = secs("retry-after").unwrap_or(0);
            assert!(retry <= window, "retry-after {retry} s beyond the {window} s window\n{}", context());
        }
        // The window is the emission interval times the limit, rounded up to the nanosecond.
        let reset = secs("x-ratelimit-reset").unwrap_or(0);
        assert!(reset <= window + 1, "x-ratelimit-reset {reset} s beyond the {window} s window\n{}", context());
    }
    // No policy here sets or removes Retry-After: a forwarded response keeps the upstream's.
    if !exchange.local {
        let retry_after = |headers: &[(String, Vec<u8>)]| -> Vec<Vec<u8>> {
            headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("retry-after")).map(|(_, v)| v.clone()).collect()
        };
        let kept = retry_after(&response.headers);
        assert_eq!(kept, retry_after(&request.upstream.headers), "the upstream's retry-after\n{}", context());
    }
    for name in ["ratelimit", "ratelimit-policy", "retry-after", "x-ratelimit-remaining", "location"] {
        if exchange.local || request.upstream.header_count(name) == 0 {
            assert!(response.header_count(name) <= 1, "{name} more than once\n{}", context());
        }
    }
}

/// `w` of a `RateLimit-Policy` value (`"login";q=5;w=60`).
fn window_secs(policy: &str) -> Option<u64> {
    policy.split(';').find_map(|param| param.trim().strip_prefix("w=")?.parse().ok())
}

fn show(headers: &[(String, Vec<u8>)]) -> String {
    headers.iter().map(|(name, value)| format!("  {}: {}\n", name.escape_debug(), value.escape_ascii())).collect()
}

/// RFC 9110 token, lowercase as the filter writes names.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible ASCII, spaces and tabs, no surrounding whitespace: what the core promises to write.
fn is_field_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        && value.first().is_none_or(|b| !b" \t".contains(b))
        && value.last().is_none_or(|b| !b" \t".contains(b))
}

/// libFuzzer reads this section as extra coverage counters and clears it before every input.
const FEATURES: usize = 1 << 14;
#[used]
#[unsafe(link_section = "__libfuzzer_extra_counters")]
static EXTRA_COUNTERS: [AtomicU8; FEATURES] = [const { AtomicU8::new(0) }; FEATURES];

fn feature(parts: &[u64]) {
    // FNV-1a over the parts: stable across runs, so a corpus keeps its meaning.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for byte in part.to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }
    let counter = &EXTRA_COUNTERS[(hash % FEATURES as u64) as usize];
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1));
}

/// Turns what the filter did into features; upstream-driven detail (its status, the headers it
/// sent) is left out, or every upstream variation would look like new filter behaviour.
fn report(policy: usize, previous: u64, request: &HttpRequest, exchange: &Exchange, new_logs: &[(u32, String)]) {
    let policy = policy as u64;
    let kind = outcome(exchange);
    let log2 = |n: u64| u64::from(64 - n.leading_zeros());
    feature(&[1, policy, kind]);
    feature(&[2, policy, previous, kind]);
    // Instructions per phase are a proxy for the path the filter took through the core.
    feature(&[3, policy, kind, log2(exchange.request_fuel)]);
    feature(&[4, policy, kind, log2(exchange.fuel.saturating_sub(exchange.request_fuel))]);
    let mut written = 0u64;
    for (bit, name) in MANAGED.iter().chain(&["ratelimit-policy", "x-ratelimit-reset", "content-type"]).enumerate() {
        if exchange.response.header_count(name) > 0 && request.upstream.header_count(name) == 0 {
            written |= 1 << bit;
        }
    }
    feature(&[5, policy, kind, written]);
    if let Some(remaining) = exchange.response.header("x-ratelimit-remaining").and_then(|v| v.parse::<u64>().ok()) {
        let tier = exchange.response.header("ratelimit-policy").unwrap_or_default();
        let tier = tier.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        feature(&[6, policy, tier, remaining.min(128)]);
    }
    if let Some(retry) = exchange.response.header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        feature(&[7, policy, kind, log2(retry)]);
    }
    for (level, line) in new_logs {
        let words = line.bytes().take(48).fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        feature(&[8, policy, u64::from(*level), words]);
    }
}

/// The filter's status for a local reply, 0 for a forwarded request.
fn outcome(exchange: &Exchange) -> u64 {
    if exchange.local { u64::from(exchange.response.status) } else { 0 }
}
