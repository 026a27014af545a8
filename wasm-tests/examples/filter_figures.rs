//! The filter's deterministic costs for `cargo xtask bench`, as one JSON object: Wasm
//! instructions (fuel) per request for the common outcomes, and the shared-data bytes the
//! limiter keeps per client key once every slot is taken.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use wasm_tests::{FilterModule, Host, HttpRequest, Plugin};

const CONFIG: &str = r#"{"allowed_hosts": ["localhost"], "https_redirect": {"https_port": 8443}}"#;

fn fuel(filter: &mut Plugin, request: &HttpRequest) -> u64 {
    // The first send warms allocator state; the second is the figure.
    filter.send(request).unwrap();
    filter.send(request).unwrap().fuel
}

fn main() {
    let module = FilterModule::built();
    let host = Host::new();
    let mut filter = host.plugin(module, CONFIG).unwrap();
    let forwarded_tier = fuel(&mut filter, &HttpRequest::get("/api/v1/videos?limit=20"));
    let forwarded_untiered = fuel(&mut filter, &HttpRequest::get("/static/app.js"));
    let redirect = fuel(&mut filter, &HttpRequest::get("/api/v1/videos").plain("localhost:8080"));
    let login = HttpRequest::post("/api/v1/auth/login").peer("192.0.2.7:1");
    for _ in 0..5 {
        filter.send(&login).unwrap();
    }
    let limited = filter.send(&login).unwrap();
    assert_eq!(limited.response.status, 429);

    // Every slot of every tier filled by distinct clients: bytes over slots is the cost of a key.
    let capacity = 1024u32;
    let host = Host::new();
    let config = format!(r#"{{"limiter": {{"capacity_per_tier": {capacity}}}}}"#);
    let mut filter = host.plugin(module, &config).unwrap();
    for i in 0..capacity * 4 {
        let [_, b, c, d] = i.to_be_bytes();
        filter.send(&HttpRequest::get("/api/v1/videos").peer(&format!("10.{b}.{c}.{d}:1"))).unwrap();
    }
    let tiers = host.shared_data_keys() as f64 / f64::from(capacity / 4);
    let bytes_per_key = host.shared_data_bytes() as f64 / (tiers * f64::from(capacity));

    let figures = serde_json::json!({
        "fuel_forwarded_tier": forwarded_tier,
        "fuel_forwarded_untiered": forwarded_untiered,
        "fuel_redirect": redirect,
        "fuel_rate_limited": limited.fuel,
        "limiter_bytes_per_key": bytes_per_key,
        "limiter_tiers": tiers,
    });
    println!("{figures}");
}
