//! `limiter.backend: "global"` on every backend, through the host's gRPC call ABI: the
//! conformance vectors against the real rate-limit service over a real `redis-server`, which
//! requests call out and which never do, refusals already known, every way the service can
//! fail (unknown cluster, error status, timeout, garbage), a service that fills only the
//! standard RLS fields, and a stream that ends mid-call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod vectors;

use portcullis_core::conformance::Requirement;
use portcullis_ratelimit::proto::{
    Code, DescriptorStatus, Duration as ProtoDuration, RateLimit, RateLimitRequest, RateLimitResponse, Unit,
};
use portcullis_ratelimit::rls::rate_limit_service_client::RateLimitServiceClient;
use portcullis_ratelimit::testing::Redis;
use prost::Message;
use serde_json::json;
use wasm_tests::{Backend, GrpcAnswer, GrpcCall, Host, HttpRequest, Plugin};

wasm_tests::on_each_backend!(
    conformance_vectors_hold_through_the_real_service,
    only_limited_requests_call_out_and_known_refusals_do_not,
    the_call_is_the_standard_descriptor_with_the_configured_timeout,
    every_failure_of_the_service_falls_back_to_on_unavailable,
    a_service_with_only_the_standard_fields_is_understood,
    a_stream_that_ends_mid_call_cancels_it,
    each_vm_opens_its_connection_to_the_service_once_on_its_first_tick,
);

const CLUSTER: &str = "ratelimit";

/// The key every host of these tests' fleet shares (a fleet must: see `keyed`).
const FLEET_KEY: &str = "5f4e3d2c1b0a99887766554433221100";

/// `policy` with the fleet's `limiter.hash_key` unless it names its own.
fn keyed(policy: &serde_json::Value) -> serde_json::Value {
    let mut policy = policy.clone();
    let limiter = policy.as_object_mut().unwrap().entry("limiter").or_insert_with(|| json!({}));
    limiter.as_object_mut().unwrap().entry("hash_key").or_insert_with(|| json!(FLEET_KEY));
    policy
}

/// `policy` with `limiter.backend: "global"` pointing at [`CLUSTER`].
fn global(policy: &serde_json::Value, extra: serde_json::Value) -> String {
    let mut policy = keyed(policy);
    let limiter = policy.as_object_mut().unwrap().entry("limiter").or_insert_with(|| json!({}));
    let mut global = json!({"cluster": CLUSTER, "timeout_ms": 1000});
    for (key, value) in extra.as_object().unwrap() {
        global[key] = value.clone();
    }
    limiter["backend"] = json!("global");
    limiter["global"] = global;
    policy.to_string()
}

/// The real `portcullis-ratelimit` service, in process on its own runtime, over `redis`.
struct RealService {
    runtime: tokio::runtime::Runtime,
    client: RateLimitServiceClient<tonic::transport::Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RealService {
    fn start(redis: &Redis, policy: &str) -> Shared {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let dir = portcullis_ratelimit::testing::scratch("global-policy");
        let path = dir.join(format!("{}.json", portcullis_ratelimit::testing::free_port()));
        let policy = keyed(&serde_json::from_str(policy).unwrap());
        std::fs::write(&path, policy.to_string()).unwrap();
        let cli = portcullis_ratelimit::settings::Cli {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            redis_urls: vec![redis.url()],
            redis_cluster: false,
            // Below the filter's 1000 ms call timeout, and far above a quiet Redis: on a loaded
            // test machine a slow answer must not turn into the fallback's decision.
            redis_timeout_ms: 900,
            policy: Some(path),
            hash_key_file: None,
        };
        let settings = cli.settings().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let client = runtime.block_on(async {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", grpc.local_addr().unwrap());
            tokio::spawn(portcullis_ratelimit::server::serve(settings, grpc, metrics, async {
                let _ = stopped.await;
            }));
            let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
            let mut client = RateLimitServiceClient::new(channel);
            // Until Redis is connected the service answers UNAVAILABLE.
            let deadline = Instant::now() + Duration::from_secs(10);
            let probe = RateLimitRequest {
                domain: "probe".into(),
                descriptors: vec![portcullis_ratelimit::proto::RateLimitDescriptor {
                    entries: vec![portcullis_ratelimit::proto::Entry { key: "k".into(), value: "v".into() }],
                    limit: None,
                }],
                hits_addend: 0,
            };
            while client.should_rate_limit(probe.clone()).await.is_err() {
                assert!(Instant::now() < deadline, "the service never reached Redis");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        Shared(Arc::new(Self { runtime, client, _stop: stop }))
    }
}

impl wasm_tests::GrpcUpstream for Shared {
    fn call(&self, call: &GrpcCall) -> GrpcAnswer {
        assert_eq!(
            (call.service.as_str(), call.method.as_str()),
            ("envoy.service.ratelimit.v3.RateLimitService", "ShouldRateLimit")
        );
        let Ok(request) = RateLimitRequest::decode(call.message.as_slice()) else {
            return GrpcAnswer::Status(13);
        };
        let mut client = self.0.client.clone();
        let timeout = Duration::from_millis(u64::from(call.timeout_ms));
        self.0.runtime.block_on(async move {
            match tokio::time::timeout(timeout, client.should_rate_limit(request)).await {
                Err(_) => GrpcAnswer::Timeout,
                Ok(Err(status)) => GrpcAnswer::Status(status.code() as u32),
                Ok(Ok(answer)) => GrpcAnswer::Message(answer.into_inner().encode_to_vec()),
            }
        })
    }
}

/// One service shared by several hosts.
#[derive(Clone)]
struct Shared(Arc<RealService>);

fn send(plugin: &mut Plugin, request: &HttpRequest) -> wasm_tests::Exchange {
    plugin.send(request).unwrap_or_else(|e| panic!("the filter trapped: {e:?}\nlog: {:?}", plugin.logs()))
}

fn login(peer: &str) -> HttpRequest {
    HttpRequest::post("/api/v1/auth/login").peer(peer)
}

fn conformance_vectors_hold_through_the_real_service(backend: Backend) {
    // The service keeps Redis' clock, so cases that move time are the local limiter's alone.
    const SUPPORTED: [Requirement; 2] = [Requirement::Peer, Requirement::RawRequest];
    let redis = Redis::start();
    let mut services: HashMap<String, Shared> = HashMap::new();
    let replay = vectors::replay(
        &SUPPORTED,
        |case, config| {
            redis.cli(&["FLUSHALL"]);
            let policy: serde_json::Value = serde_json::from_str(config).unwrap();
            let service = services.entry(case.config.clone()).or_insert_with(|| RealService::start(&redis, config));
            let host = Host::new();
            host.grpc_cluster(CLUSTER, service.clone());
            let plugin = host.start(backend, &global(&policy, json!({}))).unwrap();
            (host, plugin)
        },
        |case, host| {
            assert_eq!(host.metric("portcullis.global_fallbacks").unwrap_or(0), 0, "{}", case.name);
        },
    );
    let summary = replay.found.verdict(replay.found.total - 2).unwrap_or_else(|e| panic!("{e}"));
    assert!(replay.grpc_calls > 100, "the vectors' limited requests went to the service ({} calls)", replay.grpc_calls);
    println!("{backend:?}, global: {summary}");
}

/// A cluster that answers every call `answer` and counts the calls.
fn scripted(answer: GrpcAnswer) -> (impl wasm_tests::GrpcUpstream, Arc<Mutex<Vec<GrpcCall>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    (
        move |call: &GrpcCall| {
            log.lock().unwrap().push(call.clone());
            answer.clone()
        },
        seen,
    )
}

fn only_limited_requests_call_out_and_known_refusals_do_not(backend: Backend) {
    let redis = Redis::start();
    let policy = json!({"allowed_hosts": ["localhost"], "https_redirect": {"https_port": 8443}});
    let service = RealService::start(&redis, &policy.to_string());
    let host = Host::new();
    host.grpc_cluster(CLUSTER, service);
    let mut plugin = host.start(backend, &global(&policy, json!({}))).unwrap();

    let never = [
        HttpRequest::get("/api/v1/health"),
        HttpRequest::get("/not/a/tier"),
        HttpRequest::post("/api/v1/auth/login").plain("localhost:8080"),
        HttpRequest::post("/api/v1/auth/login").authority("evil.example"),
    ];
    for request in &never {
        assert!(send(&mut plugin, request).grpc_calls.is_empty(), "{:?}", request.headers);
    }
    let mut statuses = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let exchange = send(&mut plugin, &login("198.51.100.7:1"));
        statuses.push(exchange.response.status);
        calls.push(exchange.grpc_calls.len());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(calls, [1, 1, 1, 1, 1, 1, 0, 0], "a refusal is remembered until its Retry-After");
    let refused = send(&mut plugin, &login("198.51.100.7:1"));
    assert_eq!(refused.response.header("retry-after"), Some("12"));
    assert_eq!(refused.response.header("ratelimit-policy"), Some("\"login\";q=5;w=60"));
    // Past the Retry-After this Envoy knows of, it asks again (the fleet's clock decides).
    host.advance(Duration::from_secs(13));
    assert_eq!(send(&mut plugin, &login("198.51.100.7:1")).grpc_calls.len(), 1);
    plugin.tick().unwrap();
    assert_eq!(host.metric("portcullis.global_calls"), Some(7));
    assert_eq!(host.metric("portcullis.global_known_denials"), Some(3));
}

fn the_call_is_the_standard_descriptor_with_the_configured_timeout(backend: Backend) {
    let ok = RateLimitResponse { overall_code: Code::Ok as i32, ..RateLimitResponse::default() };
    let (upstream, seen) = scripted(GrpcAnswer::Message(ok.encode_to_vec()));
    let host = Host::new();
    host.grpc_cluster(CLUSTER, upstream);
    let policy = json!({"allowed_hosts": ["localhost"], "limiter": {"hash_key": "00112233445566778899aabbccddeeff"}});
    let mut plugin = host.start(backend, &global(&policy, json!({"timeout_ms": 20, "domain": "edge"}))).unwrap();
    assert!(!send(&mut plugin, &login("203.0.113.200:9")).local);
    let calls = seen.lock().unwrap();
    let call = &calls[0];
    assert_eq!((call.cluster.as_str(), call.timeout_ms), (CLUSTER, 20));
    let request = RateLimitRequest::decode(call.message.as_slice()).unwrap();
    assert_eq!(request.domain, "edge");
    let entries: Vec<(&str, &str)> =
        request.descriptors[0].entries.iter().map(|e| (e.key.as_str(), e.value.as_str())).collect();
    assert_eq!(entries[0], ("tier", "login"));
    assert_eq!(entries[1].0, "client");
    assert_eq!(entries[1].1.len(), 32, "a keyed hash");
    assert!(!String::from_utf8_lossy(&call.message).contains("203.0.113"), "no address leaves the Envoy");
}

fn every_failure_of_the_service_falls_back_to_on_unavailable(backend: Backend) {
    let policy = json!({"allowed_hosts": ["localhost"]});
    let garbage = GrpcAnswer::Message(vec![0xff, 0xff, 0xff, 0x0f]);
    let unknown_code = GrpcAnswer::Message(RateLimitResponse::default().encode_to_vec());
    for (what, answer) in [
        ("UNAVAILABLE", Some(GrpcAnswer::Status(14))),
        ("a timeout", Some(GrpcAnswer::Timeout)),
        ("garbage", Some(garbage)),
        ("code UNKNOWN", Some(unknown_code)),
        ("an unknown cluster", None),
    ] {
        let host = Host::new();
        if let Some(answer) = answer.clone() {
            host.grpc_cluster(CLUSTER, scripted(answer).0);
        }
        // Local (the default): this Envoy's exact limiter, never unlimited.
        let mut plugin = host.start(backend, &global(&policy, json!({}))).unwrap();
        let statuses: Vec<u16> = (0..7).map(|_| send(&mut plugin, &login("192.0.2.44:1")).response.status).collect();
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429], "{what}");
        plugin.tick().unwrap();
        assert_eq!(host.metric("portcullis.global_fallbacks"), Some(7), "{what}");
        assert!(plugin.logs().iter().any(|(level, line)| *level == 3 && line.contains("unavailable")), "{what}");

        let mut allow = host.start(backend, &global(&policy, json!({"on_unavailable": "allow"}))).unwrap();
        assert!((0..8).all(|_| send(&mut allow, &login("192.0.2.45:1")).response.status == 200), "{what}");
        let mut deny = host.start(backend, &global(&policy, json!({"on_unavailable": "deny"}))).unwrap();
        let refused = send(&mut deny, &login("192.0.2.46:1"));
        assert_eq!((refused.response.status, refused.response.header("retry-after")), (503, Some("1")), "{what}");
    }
    let host = Host::new();
    let err = host.start(backend, &global(&policy, json!({"timeout_ms": 0}))).err().unwrap();
    assert!(format!("{err:?}").contains("limiter.global.timeout_ms"), "{err:?}");
    let err = host.start(backend, r#"{"limiter": {"backend": "global"}}"#).err().unwrap();
    assert!(format!("{err:?}").contains("limiter.global"), "{err:?}");
    let unkeyed = r#"{"limiter": {"backend": "global", "global": {"cluster": "ratelimit"}}}"#;
    let err = host.start(backend, unkeyed).err().unwrap();
    assert!(format!("{err:?}").contains("limiter.hash_key: is required"), "{err:?}");
}

/// A test double of envoyproxy/ratelimit's contract: a fixed window per descriptor, answered
/// with the standard fields only (no headers, no Portcullis extras).
#[derive(Default)]
struct StandardFieldsOnly {
    windows: Mutex<HashMap<Vec<(String, String)>, u32>>,
}

impl wasm_tests::GrpcUpstream for StandardFieldsOnly {
    fn call(&self, call: &GrpcCall) -> GrpcAnswer {
        let request = RateLimitRequest::decode(call.message.as_slice()).unwrap();
        let key: Vec<(String, String)> =
            request.descriptors[0].entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
        let mut windows = self.windows.lock().unwrap();
        let used = windows.entry(key).or_insert(0);
        *used += 1;
        let (limit, over) = (3, *used > 3);
        let status = DescriptorStatus {
            code: if over { Code::OverLimit } else { Code::Ok } as i32,
            current_limit: Some(RateLimit { requests_per_unit: limit, unit: Unit::Minute as i32, name: String::new() }),
            limit_remaining: limit.saturating_sub(*used),
            duration_until_reset: Some(ProtoDuration { seconds: 41, nanos: 0 }),
        };
        let overall_code = if over { Code::OverLimit } else { Code::Ok } as i32;
        GrpcAnswer::Message(
            RateLimitResponse { overall_code, statuses: vec![status], ..Default::default() }.encode_to_vec(),
        )
    }
}

fn a_service_with_only_the_standard_fields_is_understood(backend: Backend) {
    let host = Host::new();
    host.grpc_cluster(CLUSTER, StandardFieldsOnly::default());
    let mut plugin = host.start(backend, &global(&json!({"allowed_hosts": ["localhost"]}), json!({}))).unwrap();
    let first = send(&mut plugin, &login("192.0.2.60:1"));
    assert_eq!(first.response.status, 200);
    assert_eq!(first.response.header("x-ratelimit-remaining"), Some("2"));
    assert_eq!(first.response.header("ratelimit"), Some("\"login\";r=2;t=41"));
    let statuses: Vec<u16> = (0..3).map(|_| send(&mut plugin, &login("192.0.2.60:1")).response.status).collect();
    assert_eq!(statuses, [200, 200, 429]);
    let refused = send(&mut plugin, &login("192.0.2.60:1"));
    assert_eq!(refused.response.status, 429);
    assert_eq!(refused.response.header("retry-after"), Some("41"), "the window's reset, as the service said");
    assert!(refused.grpc_calls.is_empty(), "known until then");
}

fn a_stream_that_ends_mid_call_cancels_it(backend: Backend) {
    let host = Host::new();
    let (upstream, _) = scripted(GrpcAnswer::Hang);
    host.grpc_cluster(CLUSTER, upstream);
    let mut plugin = host.start(backend, &global(&json!({"allowed_hosts": ["localhost"]}), json!({}))).unwrap();
    let exchange = send(&mut plugin, &login("192.0.2.70:1"));
    assert!(exchange.reset);
    assert_eq!(exchange.grpc_cancelled, [exchange.grpc_calls[0].token]);
    // The VM carries on with the next request.
    let (ok, _) = scripted(GrpcAnswer::Status(14));
    host.grpc_cluster(CLUSTER, ok);
    assert_eq!(send(&mut plugin, &login("192.0.2.70:1")).response.status, 200);
}

fn each_vm_opens_its_connection_to_the_service_once_on_its_first_tick(backend: Backend) {
    let redis = Redis::start();
    let policy = json!({"allowed_hosts": ["localhost"]});
    let host = Host::new();
    host.grpc_cluster(CLUSTER, RealService::start(&redis, &policy.to_string()));
    let mut plugin = host.start(backend, &global(&policy, json!({}))).unwrap();
    plugin.tick().unwrap();
    let calls = plugin.root_grpc_calls().to_vec();
    assert_eq!(calls.len(), 1, "one warm-up call");
    let request = RateLimitRequest::decode(calls[0].message.as_slice()).unwrap();
    assert_eq!(request.descriptors[0].entries[0].value, "(warm-up)");
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "answered without touching Redis");
    plugin.tick().unwrap();
    assert_eq!(plugin.root_grpc_calls().len(), 1, "only once");
    assert_eq!(host.metric("portcullis.global_calls"), Some(0), "not a limited request");
    assert_eq!(send(&mut plugin, &login("192.0.2.80:1")).response.status, 200);
}
