//! `cargo xtask bench envoy`: Envoy's CPU time per request, the Portcullis filter against Envoy's
//! native equivalent of its policy and against the host-call floor (a filter making exactly its
//! host calls with precomputed answers), for each class of request (untiered and limited-tier
//! forwards, a refusal, a redirect), plus router-only and an empty Wasm filter for scale.
//!
//! Built to hold on a noisy shared machine: CPU time of the Envoy process (from /proc) per
//! request rather than requests per second; Envoy pinned to one core and the load generator and
//! upstream to the other; the variants interleaved within each of at least seven rounds (the
//! order reversed every other round, so drift favours neither); and each ratio taken per round,
//! reported as the median of the per-round ratios with their min–max.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::envoy::{INSTALLED_FILTER, admin_ready};
use crate::stage::{cmd, exec, output, root};
use crate::tools::state_dir;

pub const UPSTREAM_PORT: u16 = 18000;
pub const BASELINE_FILTER: &str = ".portcullis/envoy/baseline_filter.wasm";
pub const FLOOR_FILTER: &str = ".portcullis/envoy/floor_filter.wasm";
pub const PROXY_PORT: u16 = 18080;
pub const PROXY_ADMIN: u16 = 18901;
const SECONDS_PER_RUN: u32 = 8;
const ROUNDS: usize = 7;
/// Envoy under test runs on this core; wrk and the upstream on the other.
const PROXY_CPU: &str = "0";
const LOAD_CPU: &str = "1";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    RouterOnly,
    Native,
    /// A proxy-wasm filter that does nothing: the floor any Wasm filter pays.
    EmptyWasm,
    /// Portcullis's host calls for the class, answers precomputed, no logic.
    Floor,
    Portcullis,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::RouterOnly => "router only",
            Self::Native => "Envoy native",
            Self::EmptyWasm => "empty proxy-wasm filter",
            Self::Floor => "host-call floor",
            Self::Portcullis => "Portcullis filter",
        }
    }
}

/// A class of request, each measured against its native equivalent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Forwarded, no tier matches: headers only.
    Untiered,
    /// Forwarded on a limited tier whose limit is never reached: the limiter's full work.
    Limited,
    /// Refused by a tier with no quota left: the 429 with its headers and JSON body.
    Refused,
    /// Plain HTTP redirected to HTTPS.
    Redirect,
}

const CLASSES: [Class; 4] = [Class::Untiered, Class::Limited, Class::Refused, Class::Redirect];

impl Class {
    fn name(self) -> &'static str {
        match self {
            Self::Untiered => "forwarded, no tier",
            Self::Limited => "forwarded, limited tier",
            Self::Refused => "refused (429)",
            Self::Redirect => "redirect (301)",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Untiered => "/free",
            Self::Limited | Self::Redirect => "/bench",
            Self::Refused => "/refused",
        }
    }

    fn status(self) -> &'static str {
        match self {
            Self::Untiered | Self::Limited => "200",
            Self::Refused => "429",
            Self::Redirect => "301",
        }
    }

    /// The variants measured for this class: router-only and the empty filter once, for scale.
    fn variants(self) -> &'static [Variant] {
        match self {
            Self::Limited => {
                &[Variant::Native, Variant::Portcullis, Variant::Floor, Variant::RouterOnly, Variant::EmptyWasm]
            }
            _ => &[Variant::Native, Variant::Portcullis, Variant::Floor],
        }
    }
}

/// The policy both the native configuration and the filter apply: the seed headers, a tier
/// high enough never to refuse (so the limiter does its full work every time), a tier that
/// refuses everything after its first request, and the redirect only for that class.
fn policy(class: Class) -> String {
    format!(
        r#"{{"https_redirect": {{"enabled": {}}}, "allowed_hosts": ["*"],
 "rate_limits": [{{"name": "bench", "method": "GET", "path": "/bench", "limit": "1000000/second"}},
                 {{"name": "refused", "method": "GET", "path": "/refused", "limit": "1/day"}}]}}"#,
        class == Class::Redirect
    )
}

const SEED_HEADERS: [(&str, &str); 7] = [
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'",
    ),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("permissions-policy", "geolocation=(), microphone=(), camera=(), payment=(), usb=(), magnetometer=()"),
    ("server", "Unknown"),
];

/// `key: value` header items at `indent`, for route and filter header lists.
fn header_items(indent: usize, headers: &[(&str, &str)]) -> String {
    headers
        .iter()
        .map(|(k, v)| {
            format!(
                "\n{0}- header: {{ key: {k}, value: \"{v}\" }}\n{0}  append_action: OVERWRITE_IF_EXISTS_OR_ADD",
                " ".repeat(indent)
            )
        })
        .collect()
}

fn proxy_config(variant: Variant, class: Class) -> Result<String> {
    Ok(match variant {
        Variant::RouterOnly => proxy_yaml("", &plain_route(), ""),
        Variant::EmptyWasm => proxy_yaml(&yardstick_filter(BASELINE_FILTER, ""), &plain_route(), ""),
        Variant::Native => native_config(class),
        Variant::Portcullis => filter_proxy_config(&policy(class), ""),
        Variant::Floor => {
            // A JSON string is a YAML double-quoted scalar.
            let script = serde_json::to_string(&floor_script(class)?)?;
            let configuration = format!(
                r#"
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: {script}"#
            );
            proxy_yaml(&yardstick_filter(FLOOR_FILTER, &configuration), &plain_route(), "")
        }
    })
}

/// A yardstick Wasm filter from `file`, with `configuration` lines (at 24 spaces) if any.
fn yardstick_filter(file: &str, configuration: &str) -> String {
    format!(
        r#"
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        vm_config:
                          runtime: envoy.wasm.runtime.v8
                          code: {{ local: {{ filename: {file} }} }}{configuration}"#
    )
}

/// The floor filter's script for `class`: the host calls the Portcullis filter makes for it
/// (`edge/envoy/src/lib.rs`), with the answers the core gives for the bench's policy.
fn floor_script(class: Class) -> Result<String> {
    use portcullis_core::{BUCKET_BYTES, Decision, MemoryStore, Peer, Policy, Request, Scheme};
    let policy = Policy::from_json(policy(class).as_bytes()).context("the bench policy")?;
    let headers: Vec<(&str, &str)> = Vec::new();
    let path = class.path().as_bytes();
    let request = Request {
        method: b"GET",
        scheme: Scheme::Http,
        authority: Some(b"127.0.0.1:18080"),
        path: Some(path),
        peer: Peer::Socket("127.0.0.1:40000"),
        headers: &headers,
    };
    let store = MemoryStore::new();
    let now = 1_800_000_000_000_000_000;
    // The refused tier's first request is its one allowed.
    let mut decision = policy.decide(&request, now, &store);
    if class == Class::Refused {
        decision = policy.decide(&request, now, &store);
    }
    // The scheme on every request; the peer only for a limited tier's key (the bench's policy
    // trusts no proxy, so no forwarded scheme needs judging).
    let mut lines = vec!["property connection\\0tls_version".to_owned()];
    if matches!(class, Class::Limited | Class::Refused) {
        lines.push("property source\\0address".into());
        lines.push("clock".into());
        let write = if class == Class::Limited { " write" } else { "" };
        lines.push(format!("shared portcullis/1 {BUCKET_BYTES}{write}"));
    }
    match decision {
        Decision::Respond(reply) => {
            lines.push(format!("reply {}", reply.status));
            lines.extend(reply.headers.iter().map(|(n, v)| format!("reply-header {n}: {v}")));
            if !reply.body.is_empty() {
                lines.push(format!("reply-body {}", reply.body));
            }
        }
        Decision::Forward(forward) => {
            /// The filter's response-phase calls, one line each.
            struct Calls<'a>(&'a mut Vec<String>);
            impl portcullis_core::HeaderSink for Calls<'_> {
                fn set(&mut self, name: &str, value: &str) {
                    self.0.push(format!("response-set {name}: {value}"));
                }
                fn remove(&mut self, name: &str) {
                    self.0.push(format!("response-remove {name}"));
                }
            }
            policy.response_edits(&forward.plan).apply(&mut Calls(&mut lines));
        }
    }
    Ok(lines.join("\n") + "\n")
}

/// One catch-all route to the upstream.
fn plain_route() -> String {
    r#"
                        - match: { prefix: "/" }
                          route:
                            cluster: upstream"#
        .to_owned()
}

/// Envoy's own filters doing what the policy does for `class`: header mutation on every
/// answer, `local_ratelimit` per client address on the limited paths (a huge bucket for
/// `/bench`, an empty one for `/refused`, whose 429 carries the same headers), a route redirect
/// to HTTPS for the redirect class.
fn native_config(class: Class) -> String {
    let add = header_items(28, &SEED_HEADERS);
    let headers = format!(
        "\n                          response_headers_to_remove: [x-powered-by]\n                          response_headers_to_add:{add}"
    );
    let limited = |descriptor: &str| {
        format!(
            r#"
                          typed_per_filter_config:
                            envoy.filters.http.local_ratelimit:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                              stat_prefix: {descriptor}
                              token_bucket: {{ max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s }}
                              filter_enabled: {{ default_value: {{ numerator: 100, denominator: HUNDRED }} }}
                              filter_enforced: {{ default_value: {{ numerator: 100, denominator: HUNDRED }} }}
                              response_headers_to_add:{}
                              descriptors:
                                - entries: [{{ key: remote_address }}]
                                  token_bucket: {}"#,
            header_items(32, &SEED_HEADERS),
            if descriptor == "refused" {
                "{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 86400s }"
            } else {
                "{ max_tokens: 1000000, tokens_per_fill: 1000000, fill_interval: 1s }"
            }
        )
    };
    let routes = if class == Class::Redirect {
        format!(
            r#"
                        - match: {{ prefix: "/" }}
                          redirect: {{ https_redirect: true }}{headers}"#
        )
    } else {
        let mut routes = String::new();
        for (prefix, descriptor) in [("/bench", Some("bench")), ("/refused", Some("refused")), ("/", None)] {
            routes.push_str(&format!(
                r#"
                        - match: {{ prefix: "{prefix}" }}
                          route:
                            cluster: upstream{}{headers}{}"#,
                if descriptor.is_some() {
                    "\n                            rate_limits: [{ actions: [{ remote_address: {} }] }]"
                } else {
                    ""
                },
                descriptor.map(limited).unwrap_or_default(),
            ));
        }
        routes
    };
    let filter = r#"
                  - name: envoy.filters.http.local_ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                      stat_prefix: native"#;
    proxy_yaml(filter, &routes, "")
}

/// The bench proxy with the Portcullis filter under `policy` (JSON), plus `extra_clusters`
/// (YAML list items at four spaces).
pub fn filter_proxy_config(policy: &str, extra_clusters: &str) -> String {
    let filter = format!(
        r#"
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        root_id: portcullis
                        vm_config:
                          vm_id: portcullis
                          runtime: envoy.wasm.runtime.v8
                          code: {{ local: {{ filename: {INSTALLED_FILTER} }} }}
                        configuration:
                          "@type": type.googleapis.com/google.protobuf.StringValue
                          value: '{}'"#,
        policy.replace('\n', "")
    );
    proxy_yaml(&filter, &plain_route(), extra_clusters)
}

/// The bench proxy: `filters` before the router (items at 18 spaces), `routes` (items at 24).
fn proxy_yaml(filters: &str, routes: &str, extra_clusters: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {PROXY_ADMIN} }} }}
static_resources:
  listeners:
    - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {PROXY_PORT} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: bench
                server_name: Unknown
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:{routes}
                http_filters:{filters}
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
    - name: upstream
      type: STATIC
      load_assignment:
        cluster_name: upstream
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UPSTREAM_PORT} }} }} }} }}] }}]
{extra_clusters}"#
    )
}

pub fn upstream_config() -> String {
    format!(
        r#"static_resources:
  listeners:
    - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {UPSTREAM_PORT} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: upstream
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      response_headers_to_add: [{{ header: {{ key: x-powered-by, value: FastAPI }} }}]
                      routes: [{{ match: {{ prefix: "/" }}, direct_response: {{ status: 200, body: {{ inline_string: "{{\"ok\":true}}" }} }} }}]
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    )
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

pub fn ticks_per_second() -> Result<f64> {
    Ok(output(&mut cmd("getconf", &["CLK_TCK"]))?.trim().parse()?)
}

/// `command` on one core.
fn pinned(cpu: &str, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", cpu]).arg(program);
    command
}

/// Starts Envoy on one core, one worker.
fn spawn_pinned(envoy: &Path, config: &Path, name: &str, base_id: u32, cpu: &str) -> Result<crate::envoy::Daemon> {
    crate::envoy::Daemon::spawn(
        name,
        pinned(cpu, envoy)
            .args(["--disable-hot-restart", "--concurrency", "1", "--log-level", "error"])
            .args(["--base-id", &base_id.to_string(), "-c"])
            .arg(config)
            .current_dir(root()),
    )
}

/// Runs wrk (pinned to the load core) against `path`; returns the requests completed. Every
/// answer must be the class's: wrk counts non-2xx/3xx ones, so a 429 class must have only those
/// and the others none.
fn wrk(seconds: u32, class: Class) -> Result<u64> {
    let out = output(pinned(LOAD_CPU, Path::new("wrk")).args([
        "-t1",
        "-c16",
        &format!("-d{seconds}s"),
        &format!("http://127.0.0.1:{PROXY_PORT}{}", class.path()),
    ]))?;
    let requests: u64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().to_owned()))
        .with_context(|| format!("no request count in wrk output:\n{out}"))?
        .parse()?;
    let errors: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:").map(|n| n.trim().to_owned()))
        .map_or(Ok(0), |n| n.parse())?;
    let expected_errors = if class == Class::Refused { requests } else { 0 };
    if errors != expected_errors {
        bail!("{}: {errors} of {requests} answers were not {}:\n{out}", class.name(), class.status());
    }
    Ok(requests)
}

/// One measurement: a fresh Envoy with `variant` for `class`, its answer checked, warmed up,
/// then its CPU time per request over the run.
fn measure(envoy: &Path, variant: Variant, class: Class, dir: &Path) -> Result<f64> {
    let config = dir.join(format!("proxy-{}-{}.yaml", variant as u8, class as u8));
    std::fs::write(&config, proxy_config(variant, class)?)?;
    let mut proxy = spawn_pinned(envoy, &config, "bench-proxy", 52, PROXY_CPU)?;
    proxy.wait_until(Duration::from_secs(20), || admin_ready(PROXY_ADMIN))?;
    // Router-only and the empty filter apply no policy: every request is a plain forward.
    // (The floor answers as Portcullis would, its refusals included.)
    let load = if matches!(variant, Variant::RouterOnly | Variant::EmptyWasm) { Class::Untiered } else { class };
    let url = format!("http://127.0.0.1:{PROXY_PORT}{}", load.path());
    // The first request of the refused class is the tier's one allowed.
    let mut status = String::new();
    for _ in 0..if load == Class::Refused { 2 } else { 1 } {
        status = output(&mut cmd("curl", &["-s", "-o", "/dev/null", "-w", "%{http_code}", &url]))?;
    }
    if status != load.status() {
        bail!("{} for {}: answered {status}, not {}", variant.name(), class.name(), load.status());
    }
    wrk(1, load)?; // warm-up: connections, V8 tier-up
    let pid = proxy.child.id();
    let before = cpu_ticks(pid)?;
    let requests = wrk(SECONDS_PER_RUN, load)?;
    let ticks = cpu_ticks(pid)? - before;
    Ok(ticks as f64 / ticks_per_second()? * 1e6 / requests as f64)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// `median× (min–max, N rounds)` of per-round ratios.
fn spread(ratios: &[f64]) -> String {
    summary(ratios, "×")
}

/// `median<unit> (min–max, N rounds)` of one figure per round.
pub fn summary(values: &[f64], unit: &str) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2}{unit} ({min:.2}–{max:.2}, {} rounds)", median(values), values.len())
}

pub fn run(envoy: &Path) -> Result<Vec<(String, String)>> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: `apt-get install -y wrk` (cargo xtask setup does it when run as root)");
    }
    if Command::new("taskset").arg("--version").output().is_err() {
        bail!("taskset is missing (Debian package util-linux)");
    }
    let dir = state_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let upstream_config_path = dir.join("upstream.yaml");
    std::fs::write(&upstream_config_path, upstream_config())?;
    let mut upstream = spawn_pinned(envoy, &upstream_config_path, "bench-upstream", 51, LOAD_CPU)?;
    upstream
        .wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", UPSTREAM_PORT)).is_ok())?;

    // The yardsticks are built and optimised as the filter is.
    exec(&mut cmd(
        "cargo",
        &[
            "build",
            "--quiet",
            "-p",
            "baseline-filter",
            "-p",
            "floor-filter",
            "--target",
            "wasm32-wasip1",
            "--profile",
            "filter",
        ],
    ))?;
    let built = crate::stage::target_dir()?.join("wasm32-wasip1/filter");
    crate::envoy::wasm_opt(&built.join("baseline_filter.wasm"), &root().join(BASELINE_FILTER))?;
    crate::envoy::wasm_opt(&built.join("floor_filter.wasm"), &root().join(FLOOR_FILTER))?;
    // samples[(class, variant)] = µs per request, one per round.
    let mut samples: std::collections::BTreeMap<(u8, u8), Vec<f64>> = std::collections::BTreeMap::new();
    for round in 1..=ROUNDS {
        for class in CLASSES {
            let mut order = class.variants().to_vec();
            if round % 2 == 0 {
                order.reverse();
            }
            for variant in order {
                let micros = measure(envoy, variant, class, &dir)?;
                println!("    round {round}: {:<24} {:<24} {micros:7.2} µs CPU/request", class.name(), variant.name());
                samples.entry((class as u8, variant as u8)).or_default().push(micros);
            }
        }
    }
    let series =
        |class: Class, variant: Variant| samples.get(&(class as u8, variant as u8)).cloned().unwrap_or_default();
    let ratios = |class: Class, over: Variant, under: Variant| -> Vec<f64> {
        series(class, over).iter().zip(series(class, under)).map(|(a, b)| a / b).collect()
    };
    let mut rows = Vec::new();
    for class in CLASSES {
        for variant in class.variants() {
            rows.push((
                format!("envoy: {}: {}", class.name(), variant.name()),
                format!("{:.2} µs CPU/request (median)", median(&series(class, *variant))),
            ));
        }
        rows.push((
            format!("envoy: {}: Portcullis / native", class.name()),
            spread(&ratios(class, Variant::Portcullis, Variant::Native)),
        ));
        rows.push((
            format!("envoy: {}: Portcullis / host-call floor", class.name()),
            spread(&ratios(class, Variant::Portcullis, Variant::Floor)),
        ));
        rows.push((
            format!("envoy: {}: host-call floor / native", class.name()),
            spread(&ratios(class, Variant::Floor, Variant::Native)),
        ));
    }
    let limited = Class::Limited;
    rows.push(("envoy: native / router only".into(), spread(&ratios(limited, Variant::Native, Variant::RouterOnly))));
    rows.push((
        "envoy: empty Wasm filter / router only".into(),
        spread(&ratios(limited, Variant::EmptyWasm, Variant::RouterOnly)),
    ));
    let above: Vec<f64> = series(limited, Variant::Portcullis)
        .iter()
        .zip(series(limited, Variant::EmptyWasm))
        .map(|(a, b)| a - b)
        .collect();
    rows.push((
        "envoy: Portcullis above the empty Wasm filter (limited tier)".into(),
        format!("{:.2} µs CPU/request (median)", median(&above)),
    ));
    Ok(rows)
}
