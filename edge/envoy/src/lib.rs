//! Portcullis as a proxy-wasm HTTP filter for Envoy.
//!
//! This crate only translates between the proxy-wasm host and `portcullis-core`: it reads the
//! request once (one host call for the whole header map), asks the core, and either sends the
//! core's local reply or forwards and later applies the core's response edits in place (one
//! host call per header it replaces or removes). Every decision is made by the core.
//!
//! `no_std` (with `alloc`): inside the VM `portcullis-proxy-abi` brings the allocator and the
//! panic handler.

#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod global;
mod hash_key;
mod metrics;
mod shared_data;

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use portcullis_core::{
    Begin, Decision, HashKey, LimitCheck, Limited, MemoryStore, Outcome, Peer, PeerSource, Policy, Request,
    RequestHeaders, ResponsePlan, Scheme,
};
use portcullis_proxy_abi::{self as abi, Action, BufferType, HttpContext, LogLevel, MapType, RootContext};

use metrics::Metrics;
use shared_data::SharedDataStore;

portcullis_proxy_abi::main!(|| -> Box<dyn RootContext> { Box::new(Root::default()) });

#[derive(Default)]
struct Root {
    policy: Option<Rc<Policy>>,
    vm: Option<Rc<Vm>>,
    /// The process's generated hash key, when the policy names none.
    generated_key: Option<HashKey>,
    /// This VM's connection to the rate-limit service was opened (global mode).
    warmed: bool,
}

impl Root {
    /// Another VM's generated key won the race to shared data: hash with it from now on.
    fn adopt_stored_key(&mut self) {
        let Some(mine) = self.generated_key else {
            return;
        };
        if let Ok(Some(stored)) = hash_key::current()
            && stored != mine
            && let Some(policy) = &self.policy
        {
            self.policy = Some(Rc::new(Policy::clone(policy).with_hash_key(stored)));
            self.generated_key = Some(stored);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = abi::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        let policy = match Policy::from_json(&config) {
            Ok(policy) => policy,
            Err(err) => {
                abi::log_parts(
                    LogLevel::Critical,
                    &["portcullis: invalid configuration: ", &err.path, ": ", &err.reason],
                );
                return false;
            }
        };
        if let Err(err) = SharedDataStore::prepare(policy.bucket_count()) {
            abi::log_parts(LogLevel::Critical, &["portcullis: cannot prepare shared data: ", err.name()]);
            return false;
        }
        let policy = if policy.needs_hash_key() {
            match hash_key::shared(hash_key::random) {
                Ok(key) => {
                    self.generated_key = Some(key);
                    policy.with_hash_key(key)
                }
                Err(err) => {
                    abi::log_parts(LogLevel::Critical, &["portcullis: no limiter.hash_key and none generated: ", &err]);
                    return false;
                }
            }
        } else {
            policy
        };
        // A new policy starts this VM's state afresh: its own buckets are laid out by the
        // policy's tiers, and the service's refusals were for the old ones.
        self.vm = Some(Rc::new(Vm {
            metrics: Metrics::define(),
            reply_blocks: policy.header_sets().map(ReplyBlocks::new).collect(),
            denials: RefCell::default(),
            own: MemoryStore::new(),
        }));
        self.policy = Some(Rc::new(policy));
        if let Err(status) = abi::set_tick_period(metrics::FLUSH_EVERY) {
            abi::log_parts(LogLevel::Warn, &["portcullis: no timer, so no stats: ", status.name()]);
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(vm) = &self.vm {
            vm.metrics.flush();
        }
        self.adopt_stored_key();
        if !self.warmed {
            self.warmed = true;
            if let Some(global) = self.policy.as_ref().and_then(|p| p.global_limiter())
                && let Err(status) = global::warm_up(global)
            {
                abi::log_parts(
                    LogLevel::Warn,
                    &["portcullis: rate-limit service `", &global.cluster, "`: ", status.name()],
                );
            }
        }
    }

    fn create_http_context(&self) -> Option<Box<dyn HttpContext>> {
        let policy = self.policy.clone()?;
        let vm = self.vm.clone()?;
        Some(Box::new(Filter { policy, vm, plan: None, replied: false, reply_is_final: false, pending: None }))
    }
}

/// What every request of a VM shares, behind one reference per request.
struct Vm {
    metrics: Metrics,
    /// Each header set's reply parts serialised, by set index.
    reply_blocks: Vec<ReplyBlocks>,
    /// Refusals of the fleet's rate-limit service still in force.
    denials: RefCell<global::KnownDenials>,
    /// Buckets of this VM alone: where limits are counted should shared data fail
    /// (`on_store_error: "local"`).
    own: MemoryStore,
}

struct Filter {
    policy: Rc<Policy>,
    vm: Rc<Vm>,
    /// Set by the request phase; the response phase of a request that never reached it
    /// (Envoy's own early replies) falls back to the default profile.
    plan: Option<ResponsePlan>,
    /// The filter answered this request itself: the rest of it (an HTTP/2 body arriving after
    /// the headers) must stay paused, or Envoy would carry on to the router and reset the stream.
    replied: bool,
    /// The filter's own reply, which Envoy runs through the response phase too, already has
    /// every header it should: that phase reads and writes nothing.
    reply_is_final: bool,
    /// The limit check waiting for the rate-limit service, and the call's token.
    pending: Option<(LimitCheck, u32)>,
}

impl HttpContext for Filter {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some((check, token)) = self.pending.take() else {
            return;
        };
        if token != token_id {
            // Not this request's call; keep waiting for it.
            self.pending = Some((check, token));
            return;
        }
        let now = now_nanos();
        let answer = if status_code == 0 {
            global::answer(&check, response_size)
        } else {
            Err(["gRPC status ", itoa::Buffer::new().format(status_code)].concat())
        };
        let decision = match answer {
            Ok(answer) => {
                self.vm.denials.borrow_mut().learn(&check, &answer, now);
                self.policy.finish(&check, answer)
            }
            Err(why) => self.unavailable(&check, &why, now),
        };
        if self.act(decision) == Action::Continue
            && let Err(status) = abi::resume_http_request()
        {
            abi::log_parts(LogLevel::Error, &["portcullis: resuming the request failed: ", status.name()]);
        }
    }

    fn on_request_headers(&mut self) -> Action {
        // The whole map in one host call: in Envoy each call costs about as much as the filter's
        // own work on a request, far more than finding three pseudo-headers in the copy.
        let serialised = abi::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let (mut method, mut authority, mut path) = (None, None, None);
        for (key, value) in abi::pairs(&serialised) {
            match key {
                b":method" if method.is_none() => method = Some(value),
                b":authority" if authority.is_none() => authority = Some(value),
                b":path" if path.is_none() => path = Some(value),
                _ => continue,
            }
            if method.is_some() && authority.is_some() && path.is_some() {
                break;
            }
        }
        let headers = RequestHeaderMap { serialised: &serialised };
        let request = Request {
            method: method.unwrap_or_default(),
            scheme: connection_scheme(),
            authority,
            path,
            peer: Peer::Deferred(&DownstreamPeer),
            headers: &headers,
        };
        let check = match self.policy.begin(&request) {
            Begin::Decided(decision) => return self.act(decision),
            Begin::Check(check) => check,
        };
        let now = now_nanos();
        let policy = self.policy.clone();
        let Some(global) = policy.global_limiter() else {
            let limited = self.policy.limit_locally(&check, &SharedDataStore, &self.vm.own, now);
            return self.act_limited(limited);
        };
        let known = self.vm.denials.borrow().known(&check, now);
        if let Some(known) = known {
            self.vm.metrics.add(metrics::Counter::GlobalKnownDenials);
            return self.act(self.policy.finish(&check, known));
        }
        match global::dispatch(&self.policy, global, &check) {
            Ok(token) => {
                self.vm.metrics.add(metrics::Counter::GlobalCalls);
                // The plan of the request so far, should Envoy answer it itself meanwhile.
                self.plan = Some(check.plan());
                self.pending = Some((check, token));
                Action::Pause
            }
            Err(status) => {
                let why = ["dispatch to `", &global.cluster, "`: ", status.name()].concat();
                let decision = self.unavailable(&check, &why, now);
                self.act(decision)
            }
        }
    }

    fn on_request_body(&mut self) -> Action {
        if self.replied || self.pending.is_some() { Action::Pause } else { Action::Continue }
    }

    fn on_request_trailers(&mut self) -> Action {
        if self.replied || self.pending.is_some() { Action::Pause } else { Action::Continue }
    }

    fn on_response_headers(&mut self) -> Action {
        if self.reply_is_final {
            // Two host calls saved on every redirect and refusal.
            return Action::Continue;
        }
        let plan = self.plan.unwrap_or_else(|| self.policy.fallback_plan(connection_scheme() == Scheme::Https));
        let edits = self.policy.response_edits(&plan);
        let mut sink = ResponseHeaders { failed: None };
        edits.apply(&mut sink);
        if let Some(status) = sink.failed {
            abi::log_parts(LogLevel::Error, &["portcullis: setting response headers failed: ", status.name()]);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // The stream ended while the service was still deciding: nobody waits for the answer.
        if let Some((_, token)) = self.pending.take() {
            let _ = abi::cancel_grpc_call(token);
        }
    }
}

/// The response's header map, edited in place one header per host call.
struct ResponseHeaders {
    failed: Option<abi::Status>,
}

impl portcullis_core::HeaderSink for ResponseHeaders {
    fn set(&mut self, name: &str, value: &str) {
        if let Err(status) = abi::replace_map_value(MapType::HttpResponseHeaders, name.as_bytes(), value.as_bytes()) {
            self.failed = Some(status);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Err(status) = abi::remove_map_value(MapType::HttpResponseHeaders, name.as_bytes()) {
            self.failed = Some(status);
        }
    }
}

impl Filter {
    /// Counts the decision, keeps its plan for the response phase and carries it out.
    fn act(&mut self, decision: Decision) -> Action {
        self.vm.metrics.count(decision.outcome());
        self.plan = Some(decision.plan());
        match decision {
            Decision::Forward(_) => Action::Continue,
            Decision::Respond(reply) => {
                let headers = serialise_reply(&reply.headers, &self.vm.reply_blocks);
                let sent = abi::send_local_response(u32::from(reply.status), &headers, reply.body.as_bytes());
                if let Err(status) = sent {
                    abi::log_parts(LogLevel::Error, &["portcullis: local reply failed: ", status.name()]);
                }
                self.replied = true;
                // Envoy's `local_reply_config` (generated from the policy's own 400) adds to
                // replies of 400 and more only what they lack.
                self.reply_is_final = reply.status < 400 || self.policy.reply_is_complete(&reply.plan);
                Action::Pause
            }
        }
    }

    /// The rate-limit service could not decide `check`: `on_unavailable` does.
    fn unavailable(&self, check: &LimitCheck, why: &str, now: u64) -> Decision {
        // Once per metrics flush, not per request: an outage must not flood the log.
        if self.vm.metrics.first_since_flush(metrics::Counter::GlobalFallbacks) {
            abi::log_parts(
                LogLevel::Warn,
                &["portcullis: rate-limit service unavailable (", why, "); on_unavailable decides"],
            );
        }
        self.vm.metrics.add(metrics::Counter::GlobalFallbacks);
        let limited = self.policy.unavailable(check, &SharedDataStore, &self.vm.own, now);
        self.count_degraded(&limited);
        limited.decision
    }

    fn act_limited(&mut self, limited: Limited) -> Action {
        self.count_degraded(&limited);
        self.act(limited.decision)
    }

    /// Shared data failed and `on_store_error` decided: counted, and logged once per flush.
    fn count_degraded(&self, limited: &Limited) {
        if limited.degraded {
            if self.vm.metrics.first_since_flush(metrics::Counter::Degraded) {
                log(LogLevel::Warn, "portcullis: shared data failed; on_store_error decides (this VM's own limiter)");
            }
            self.vm.metrics.add(metrics::Counter::Degraded);
        }
    }
}

/// The downstream address, read (a host call) only when the core asks for it.
struct DownstreamPeer;

impl PeerSource for DownstreamPeer {
    fn with_peer(&self, with: &mut dyn FnMut(Peer<'_>)) {
        let bytes = abi::property(b"source\0address");
        match bytes.as_deref().map(core::str::from_utf8) {
            Some(Ok(addr)) => with(Peer::Socket(addr)),
            _ => with(Peer::Unknown),
        }
    }
}

/// The request's headers as the host serialised them. A client may repeat a header and every
/// value matters (the last `X-Forwarded-For` line is the one a trusted proxy wrote).
struct RequestHeaderMap<'a> {
    serialised: &'a [u8],
}

impl RequestHeaders for RequestHeaderMap<'_> {
    fn for_each_value(&self, name: &str, visit: &mut dyn FnMut(&[u8])) {
        for (key, value) in abi::pairs(self.serialised) {
            if key.eq_ignore_ascii_case(name.as_bytes()) {
                visit(value);
            }
        }
    }
}

/// A header set's two reply parts ([`portcullis_core::ReplyBase`]) serialised at configuration:
/// a redirect's and a JSON reply's. Serialising a dozen shared headers was half the work of
/// every refusal and redirect.
struct ReplyBlocks {
    redirect: abi::Block,
    json: abi::Block,
}

impl ReplyBlocks {
    fn new(set: &portcullis_core::HeaderSet) -> Self {
        Self {
            redirect: abi::Block::new(set.reply_base_headers(false)),
            json: abi::Block::new(set.reply_base_headers(true)),
        }
    }
}

/// A local reply's headers in the ABI's serialised form, in [`ReplyHeaders`] order: its own,
/// its header set's part (copied from `blocks`), its rate-limit headers.
fn serialise_reply(headers: &portcullis_core::ReplyHeaders, blocks: &[ReplyBlocks]) -> Vec<u8> {
    let block = headers.base().and_then(|base| {
        let blocks = blocks.get(base.set)?;
        Some(if base.json { &blocks.json } else { &blocks.redirect })
    });
    let Some(block) = block else {
        let mut writer = abi::MapWriter::new(headers.len(), headers.text_len());
        for (name, value) in headers {
            writer.push(name.as_bytes(), value.as_bytes());
        }
        return writer.finish();
    };
    let (own, rate) = (headers.own(), headers.rate_limit_headers());
    let own_len: usize = own.iter().map(|(name, value)| name.len() + value.len()).sum();
    let mut writer =
        abi::MapWriter::new(own.len() + block.count() + rate.len(), own_len + block.text_len() + rate.text_len());
    for (name, value) in own {
        writer.push(name.as_bytes(), value.as_bytes());
    }
    writer.push_block(block);
    rate.for_each(|name, value| writer.push(name.as_bytes(), value.as_bytes()));
    writer.finish()
}

/// Whether the downstream connection is TLS, as Envoy saw it (never a client-supplied header).
fn connection_scheme() -> Scheme {
    match abi::property(b"connection\0tls_version") {
        Some(version) if !version.is_empty() => Scheme::Https,
        _ => Scheme::Http,
    }
}

fn now_nanos() -> u64 {
    abi::current_time_nanos().unwrap_or(0)
}

fn log(level: LogLevel, message: &str) {
    abi::log(level, message);
}

impl Metrics {
    fn count(&self, outcome: Outcome) {
        self.add(metrics::Counter::Requests);
        self.add(metrics::Counter::from(outcome));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use portcullis_core::{Decision, MemoryStore};

    /// Replies built on the serialised set parts are byte for byte the pairs pushed one by one.
    #[test]
    fn a_reply_serialised_from_blocks_is_its_headers_in_order() {
        let store = MemoryStore::new();
        let headers: Vec<(&str, &str)> = Vec::new();
        for document in [
            &br#"{"https_redirect": {"https_port": 8443}}"#[..],
            br#"{"preset": "strict", "headers": {"Cache-Control": "private"}, "profiles": [{"path_prefix": "/api"}]}"#,
            br#"{"headers": {"RateLimit": "mine"}}"#,
        ] {
            let policy = Policy::from_json(document).unwrap();
            let blocks: Vec<ReplyBlocks> = policy.header_sets().map(ReplyBlocks::new).collect();
            let mut replies = 0;
            for (scheme, authority, path, method) in [
                (Scheme::Http, &b"localhost:8080"[..], &b"/api/v1/videos"[..], &b"GET"[..]),
                (Scheme::Https, b"evil.example", b"/", b"GET"),
                (Scheme::Https, b"localhost", b"/api/v1/auth/login", b"POST"),
            ] {
                for _ in 0..6 {
                    let request = Request {
                        method,
                        scheme,
                        authority: Some(authority),
                        path: Some(path),
                        peer: Peer::Socket("192.0.2.1:1"),
                        headers: &headers,
                    };
                    let Decision::Respond(reply) = policy.decide(&request, 1_700_000_000_000_000_000, &store) else {
                        continue;
                    };
                    replies += 1;
                    let mut one_by_one = abi::MapWriter::new(reply.headers.len(), reply.headers.text_len());
                    for (name, value) in &reply.headers {
                        one_by_one.push(name.as_bytes(), value.as_bytes());
                    }
                    let serialised = serialise_reply(&reply.headers, &blocks);
                    assert_eq!(serialised, one_by_one.finish(), "{reply:?}");
                    assert_eq!(serialised.capacity(), serialised.len(), "sized up front");
                }
            }
            assert!(replies >= 7, "a redirect or 400 and some 429s were built: {replies}");
        }
    }
}
