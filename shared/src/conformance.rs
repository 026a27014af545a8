//! The conformance vector file (`shared/conformance/vectors.json`): requests and the responses
//! every host must produce for them. The core, the wasmtime host, real Envoy and workerd all
//! replay the same file; this module holds its types, the one checker and the one replay
//! ([`replay`] over a [`Harness`]) the Rust hosts share.

// std-only (the `conformance` feature): the whole of std's prelude.
use std::prelude::rust_2024::*;

use alloc::collections::BTreeMap;

use serde::Deserialize;

/// The vector file shipped with the crate.
pub const VECTORS_JSON: &str = include_str!("../conformance/vectors.json");

/// Unix time (ms) at which every case starts; steps add `at_ms`.
pub const EPOCH_MS: u64 = 1_700_000_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vectors {
    /// Policy documents by name, referenced by cases.
    pub configs: BTreeMap<String, serde_json::Value>,
    pub cases: Vec<Case>,
}

impl Vectors {
    pub fn load() -> Result<Self, String> {
        let vectors: Self = serde_json::from_str(VECTORS_JSON).map_err(|e| format!("vectors.json: {e}"))?;
        for case in &vectors.cases {
            if !vectors.configs.contains_key(&case.config) {
                return Err(format!("case {:?} names unknown config {:?}", case.name, case.config));
            }
            // A host that lacks a capability skips the cases requiring it, so the list must be true.
            let declared = |r: Requirement| case.requires.contains(&r);
            let peers = case.steps.iter().filter_map(|s| s.request.peer.as_deref());
            let undeclared = (case.steps.iter().any(|s| s.at_ms > 0) && !declared(Requirement::Clock))
                || (case.steps.iter().any(|s| s.request.authority.is_none()) && !declared(Requirement::RawRequest))
                || peers.clone().any(|p| p == "cloudflare") && !declared(Requirement::Cloudflare)
                || peers.clone().any(|p| p != "cloudflare") && !declared(Requirement::Peer);
            if undeclared {
                return Err(format!("case {:?} does not declare everything it requires", case.name));
            }
        }
        Ok(vectors)
    }

    /// The policy document of `case`, as JSON bytes.
    pub fn config_json(&self, case: &Case) -> Vec<u8> {
        self.configs.get(&case.config).map(|v| v.to_string().into_bytes()).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub config: String,
    /// What a host must be able to do to replay the case.
    #[serde(default)]
    pub requires: Vec<Requirement>,
    /// Every case starts with empty rate-limit state.
    pub steps: Vec<Step>,
}

/// Host capabilities a case may need. A harness replays the cases it can and reports the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// Choose the peer address of each request.
    Peer,
    /// Move time forward (`at_ms`).
    Clock,
    /// Present the request as a Cloudflare Worker (CF-Connecting-IP authoritative).
    Cloudflare,
    /// Send requests an HTTP/1.1 codec would refuse (no Host).
    RawRequest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub request: VectorRequest,
    /// Milliseconds after the case's start.
    #[serde(default)]
    pub at_ms: u64,
    /// Send the request this many times; each must meet `expect`.
    #[serde(default = "one")]
    pub repeat: u32,
    /// What the upstream answers when the request is forwarded.
    #[serde(default)]
    pub upstream: Upstream,
    pub expect: Expectation,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorRequest {
    #[serde(default = "get")]
    pub method: String,
    /// `http` or `https`: the scheme of the connection.
    #[serde(default = "https")]
    pub scheme: String,
    /// `None` sends no authority at all.
    #[serde(default = "localhost")]
    pub authority: Option<String>,
    pub path: Option<String>,
    /// `ip[:port]`, `cloudflare` (CF-Connecting-IP is authoritative) or absent (the host's own).
    #[serde(default)]
    pub peer: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

fn get() -> String {
    "GET".into()
}
fn https() -> String {
    "https".into()
}
fn localhost() -> Option<String> {
    Some("localhost".into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("server".into(), "uvicorn".into()),
                ("x-powered-by".into(), "FastAPI".into()),
            ],
            body: "{\"ok\":true}".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The request reached the upstream.
    Forward,
    /// The host answered itself.
    Respond,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub action: Action,
    pub status: u16,
    /// Exact values (names case-insensitive).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers that must not be present.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Top-level fields the JSON body must contain with these values.
    #[serde(default)]
    pub body_json: BTreeMap<String, serde_json::Value>,
}

/// What a host observed for one request.
#[derive(Debug, Clone)]
pub struct Observed {
    pub action: Action,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Observed {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

impl Expectation {
    /// Every mismatch, one per line; `Ok` when the observation meets the expectation.
    pub fn check(&self, observed: &Observed) -> Result<(), String> {
        let mut problems = Vec::new();
        if observed.action != self.action {
            problems.push(format!("action: expected {:?}, got {:?}", self.action, observed.action));
        }
        if observed.status != self.status {
            problems.push(format!("status: expected {}, got {}", self.status, observed.status));
        }
        for (name, expected) in &self.headers {
            match observed.values(name).as_slice() {
                [only] if only == expected => {}
                [] => problems.push(format!("{name}: missing, expected {expected:?}")),
                got => problems.push(format!("{name}: expected {expected:?}, got {got:?}")),
            }
        }
        for name in &self.absent {
            let got = observed.values(name);
            if !got.is_empty() {
                problems.push(format!("{name}: expected absent, got {got:?}"));
            }
        }
        if !self.body_json.is_empty() {
            match serde_json::from_str::<serde_json::Value>(&observed.body) {
                Ok(body) => {
                    for (field, expected) in &self.body_json {
                        if body.get(field) != Some(expected) {
                            problems.push(format!("body.{field}: expected {expected}, got {:?}", body.get(field)));
                        }
                    }
                }
                Err(err) => problems.push(format!("body is not JSON ({err}): {:?}", observed.body)),
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("\n")) }
    }
}

/// A host under test, as [`replay`] drives it: the core itself, the filter under wasmtime, the
/// Worker's adapter, the origin's edge layer. Each translates a step into its own request type
/// and its answer back into an [`Observed`]; the replay, the time line and the checks are here.
pub trait Harness {
    /// Why this host cannot replay `case` faithfully beyond its [`Requirement`]s (e.g. the
    /// Worker, where Cloudflare's address is authoritative, with a policy that trusts proxies);
    /// `None` when it can.
    fn cannot_replay(&self, _case: &Case, _policy: &serde_json::Value) -> Option<String> {
        None
    }

    /// Starts `case` afresh (empty rate-limit state) under the policy document `policy_json`.
    fn start(&mut self, case: &Case, policy_json: &[u8]) -> Result<(), String>;

    /// Sends `step`'s request at `now_nanos` (Unix time) and reports what came back; a host
    /// without a movable clock ignores it (it replays no case that requires one).
    fn send(&mut self, step: &Step, now_nanos: u64) -> Result<Observed, String>;

    /// Checks the host once `case`'s steps are done (counters, shared state).
    fn finish(&mut self, _case: &Case) -> Result<(), String> {
        Ok(())
    }
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replay {
    pub total: usize,
    pub replayed: usize,
    pub requests: usize,
    /// Cases the host could not replay, each with why.
    pub not_applicable: Vec<String>,
    /// Every unmet expectation or host error, each naming its case, step and attempt.
    pub failures: Vec<String>,
}

impl Replay {
    /// Every failure, or a summary when there are none; `at_least` cases must have run.
    pub fn verdict(&self, at_least: usize) -> Result<String, String> {
        if !self.failures.is_empty() {
            return Err(format!("{} failures:\n\n{}", self.failures.len(), self.failures.join("\n\n")));
        }
        if self.replayed < at_least {
            return Err(format!(
                "only {} of {} cases replayed (at least {at_least} expected); not applicable: {}",
                self.replayed,
                self.total,
                self.not_applicable.join("; ")
            ));
        }
        Ok(format!(
            "replayed {} of {} cases ({} requests), all met; not applicable: {}",
            self.replayed,
            self.total,
            self.requests,
            if self.not_applicable.is_empty() { "none".to_owned() } else { self.not_applicable.join("; ") }
        ))
    }
}

/// Replays every case of the vector file that a host with `supported` capabilities can replay
/// through `harness`.
pub fn replay(supported: &[Requirement], harness: &mut impl Harness) -> Replay {
    let vectors = match Vectors::load() {
        Ok(vectors) => vectors,
        Err(err) => return Replay { failures: vec![err], ..Replay::default() },
    };
    let mut replay = Replay { total: vectors.cases.len(), ..Replay::default() };
    for case in &vectors.cases {
        if let Some(missing) = case.requires.iter().find(|r| !supported.contains(r)) {
            replay.not_applicable.push(format!("{} (needs {missing:?})", case.name));
            continue;
        }
        let policy = vectors.configs.get(&case.config).cloned().unwrap_or_default();
        if let Some(why) = harness.cannot_replay(case, &policy) {
            replay.not_applicable.push(format!("{} ({why})", case.name));
            continue;
        }
        if let Err(err) = harness.start(case, &vectors.config_json(case)) {
            replay.failures.push(format!("{}: the host did not start: {err}", case.name));
            continue;
        }
        replay.replayed += 1;
        for (index, step) in case.steps.iter().enumerate() {
            let now = (EPOCH_MS + step.at_ms) * 1_000_000;
            for attempt in 0..step.repeat {
                replay.requests += 1;
                let outcome = harness.send(step, now).and_then(|observed| step.expect.check(&observed));
                if let Err(problems) = outcome {
                    replay.failures.push(format!("{} / step {index} / attempt {attempt}:\n{problems}", case.name));
                }
            }
        }
        if let Err(err) = harness.finish(case) {
            replay.failures.push(format!("{}: after its steps: {err}", case.name));
        }
    }
    replay
}

impl Observed {
    /// The host answered itself with the core's `reply`.
    pub fn local(reply: crate::LocalResponse) -> Self {
        Self { action: Action::Respond, status: reply.status, headers: reply.headers.to_vec(), body: reply.body }
    }

    /// The request reached the upstream, which answered `upstream`; `headers` are the upstream's
    /// after the host applied the core's edits its own way.
    pub fn forwarded(upstream: &Upstream, headers: Vec<(String, String)>) -> Self {
        Self { action: Action::Forward, status: upstream.status, headers, body: upstream.body.clone() }
    }
}
