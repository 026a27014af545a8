//! A proxy-wasm ABI 0.2.1 host that runs the Portcullis filter two ways ([`Backend`]): the built
//! `.wasm` under wasmtime, as Envoy runs it, and (feature `native`, on by default) the filter
//! crate linked into the test binary, so coverage tools can see its lines. What each host call
//! does is written once (`abi`); the backends differ only in how they reach guest memory and the
//! filter's callbacks.
//!
//! The API follows "build a plugin, send a request, inspect the outcome": a [`Host`] owns what
//! Envoy keeps process-wide (shared data, metrics, the clock); each [`Plugin`] is one VM, as one
//! Envoy worker thread has. Two plugins of one host share their shared data like two workers do.
//!
//! Hand-written because the public proxy-wasm test framework cannot load ABI 0.2.1 modules and
//! pins a wasmtime that no longer builds here.

mod abi;
#[cfg(feature = "native")]
mod native;
mod wasm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine, Module};

pub use wasmtime::{Error, Result};

/// Where the built filter is looked for when `PORTCULLIS_FILTER_WASM` is not set.
pub const FILTER_RELATIVE: &str = "wasm32-wasip1/filter/portcullis_envoy.wasm";

/// The compiled filter module, shared by every test in a binary (compiling is the slow part).
pub struct FilterModule {
    engine: Engine,
    module: Module,
    path: PathBuf,
}

impl FilterModule {
    pub fn load(path: &Path) -> Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(true);
        let engine = Engine::new(&config)?;
        let module =
            Module::from_file(&engine, path).map_err(|e| wasmtime::format_err!("loading {}: {e}", path.display()))?;
        Ok(Self { engine, module, path: path.to_owned() })
    }

    /// The filter `cargo xtask test` builds: `$PORTCULLIS_FILTER_WASM`, else the workspace
    /// target directory. Panics with instructions when it has not been built.
    pub fn built() -> &'static FilterModule {
        static MODULE: OnceLock<FilterModule> = OnceLock::new();
        MODULE.get_or_init(|| {
            let path = std::env::var_os("PORTCULLIS_FILTER_WASM").map(PathBuf::from).unwrap_or_else(|| {
                let target = std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
                target.join(FILTER_RELATIVE)
            });
            if !path.exists() {
                panic!(
                    "the filter is not built at {}: run `cargo xtask test`, or build it with \
                     `cargo build -p portcullis-envoy --target wasm32-wasip1 --profile filter` \
                     (or point PORTCULLIS_FILTER_WASM at a built .wasm)",
                    path.display()
                );
            }
            FilterModule::load(&path).unwrap_or_else(|e| panic!("{e:?}"))
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One value of a shared-data key, with its CAS.
#[derive(Debug, Clone)]
struct SharedValue {
    bytes: Vec<u8>,
    cas: u32,
}

#[derive(Debug, Default)]
struct Metrics {
    by_name: HashMap<String, u32>,
    values: Vec<(String, i64)>,
}

/// One `proxy_grpc_call` as the plugin made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    pub token: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub metadata: Vec<(String, Vec<u8>)>,
    /// The serialised request message.
    pub message: Vec<u8>,
    pub timeout_ms: u32,
}

/// How a gRPC cluster answers one call, as Envoy delivers it to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcAnswer {
    /// The response message (`proxy_on_grpc_receive`).
    Message(Vec<u8>),
    /// The call failed with this gRPC status (`proxy_on_grpc_close`), e.g. 14 UNAVAILABLE.
    Status(u32),
    /// Nothing within the call's timeout: Envoy closes it with 4 DEADLINE_EXCEEDED.
    Timeout,
    /// No answer before the downstream goes away: the stream ends with the call in flight.
    Hang,
}

/// A gRPC upstream cluster of the host: a real service behind a client, or a test double.
pub trait GrpcUpstream: Send + Sync {
    fn call(&self, call: &GrpcCall) -> GrpcAnswer;
}

impl<F: Fn(&GrpcCall) -> GrpcAnswer + Send + Sync> GrpcUpstream for F {
    fn call(&self, call: &GrpcCall) -> GrpcAnswer {
        self(call)
    }
}

/// What Envoy keeps process-wide.
#[derive(Clone)]
pub struct Host {
    /// gRPC clusters by name.
    grpc: Arc<Mutex<HashMap<String, Arc<dyn GrpcUpstream>>>>,
    grpc_tokens: Arc<AtomicU32>,
    shared: Arc<Mutex<HashMap<String, SharedValue>>>,
    metrics: Arc<Mutex<Metrics>>,
    clock: Arc<AtomicU64>,
    /// Conditional shared-data writes still to lose to a simulated concurrent writer.
    contention: Arc<AtomicU32>,
    /// Envoy runs a plugin's own local reply through its response phase (envoy#28826).
    pub local_reply_through_response_phase: bool,
}

/// 2023-11-14T22:13:20Z, the conformance vectors' epoch.
pub const START_NANOS: u64 = 1_700_000_000_000_000_000;

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl Host {
    pub fn new() -> Self {
        Self {
            grpc: Arc::default(),
            grpc_tokens: Arc::new(AtomicU32::new(1)),
            shared: Arc::default(),
            metrics: Arc::default(),
            clock: Arc::new(AtomicU64::new(START_NANOS)),
            contention: Arc::default(),
            local_reply_through_response_phase: true,
        }
    }

    /// Adds a gRPC cluster named `name` answered by `upstream`.
    pub fn grpc_cluster(&self, name: &str, upstream: impl GrpcUpstream + 'static) {
        if let Ok(mut clusters) = self.grpc.lock() {
            clusters.insert(name.to_owned(), Arc::new(upstream));
        }
    }

    fn next_grpc_token(&self) -> u32 {
        self.grpc_tokens.fetch_add(1, Ordering::SeqCst)
    }

    fn has_grpc_cluster(&self, name: &str) -> bool {
        self.grpc.lock().is_ok_and(|clusters| clusters.contains_key(name))
    }

    fn grpc_upstream(&self, name: &str) -> Option<Arc<dyn GrpcUpstream>> {
        self.grpc.lock().ok()?.get(name).cloned()
    }

    pub fn advance(&self, by: Duration) {
        self.clock.fetch_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    pub fn set_time_nanos(&self, nanos: u64) {
        self.clock.store(nanos, Ordering::SeqCst);
    }

    pub fn now_nanos(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Makes the next `writes` compare-and-swap writes to shared data fail as if another worker
    /// had written the key between the plugin's read and its write.
    pub fn contend(&self, writes: u32) {
        self.contention.store(writes, Ordering::SeqCst);
    }

    fn take_contention(&self) -> bool {
        self.contention.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    /// Drops every shared-data key, which Envoy never does: what a plugin makes of buckets it
    /// prepared and no longer finds.
    pub fn forget_shared_data(&self) {
        if let Ok(mut shared) = self.shared.lock() {
            shared.clear();
        }
    }

    /// The value of a shared-data key.
    pub fn shared_data(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.lock().ok()?.get(key).map(|value| value.bytes.clone())
    }

    /// Writes a shared-data key as another worker's VM would.
    pub fn write_shared_data(&self, key: &str, bytes: &[u8]) {
        if let Ok(mut shared) = self.shared.lock() {
            let cas = shared.get(key).map_or(1, |value| value.cas.wrapping_add(1).max(1));
            shared.insert(key.to_owned(), SharedValue { bytes: bytes.to_vec(), cas });
        }
    }

    /// Keys in shared data (Envoy never frees one).
    pub fn shared_data_keys(&self) -> usize {
        self.shared.lock().map_or(0, |m| m.len())
    }

    /// Bytes of all shared-data keys and values.
    pub fn shared_data_bytes(&self) -> usize {
        self.shared.lock().map_or(0, |m| m.iter().map(|(k, v)| k.len() + v.bytes.len()).sum())
    }

    /// The value of a metric the plugins defined, by name.
    pub fn metric(&self, name: &str) -> Option<i64> {
        let metrics = self.metrics.lock().ok()?;
        let id = *metrics.by_name.get(name)?;
        metrics.values.get(id as usize).map(|(_, v)| *v)
    }

    /// Starts a VM of `module` with `config` as its plugin configuration and configures it.
    /// A configuration the plugin rejects is an error carrying the plugin's log.
    pub fn plugin(&self, module: &FilterModule, config: &str) -> Result<Plugin> {
        let vm = wasm::WasmVm::start(module, abi::State::new(self.clone(), config.as_bytes().to_vec()))?;
        Plugin::start(self.clone(), Box::new(vm), config.as_bytes())
    }

    /// Like [`Host::plugin`], on `backend` (wasmtime with [`FilterModule::built`], or native).
    pub fn start(&self, backend: Backend, config: &str) -> Result<Plugin> {
        let state = abi::State::new(self.clone(), config.as_bytes().to_vec());
        let vm: Box<dyn Vm> = match backend {
            Backend::Wasm => Box::new(wasm::WasmVm::start(FilterModule::built(), state)?),
            #[cfg(feature = "native")]
            Backend::Native => Box::new(native::NativeVm::start(state)?),
        };
        Plugin::start(self.clone(), vm, config.as_bytes())
    }
}

/// A request as the downstream sends it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Including the pseudo-headers `:method`, `:path`, `:authority`, `:scheme`.
    pub headers: Vec<(String, Vec<u8>)>,
    /// `source.address`; `None` leaves the property absent.
    pub peer: Option<String>,
    /// Whether the downstream connection is TLS (`connection.tls_version`).
    pub tls: bool,
    /// What the upstream answers if the request is forwarded.
    pub upstream: Response,
}

impl HttpRequest {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            headers: vec![
                (":method".into(), method.as_bytes().to_vec()),
                (":path".into(), path.as_bytes().to_vec()),
                (":authority".into(), b"localhost:8443".to_vec()),
                (":scheme".into(), b"https".to_vec()),
            ],
            peer: Some("203.0.113.1:40000".into()),
            tls: true,
            upstream: Response::ok(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// Plain HTTP on the given authority.
    pub fn plain(mut self, authority: &str) -> Self {
        self.tls = false;
        self.set_header(":scheme", b"http");
        self.set_header(":authority", authority.as_bytes());
        self
    }

    pub fn authority(mut self, authority: &str) -> Self {
        self.set_header(":authority", authority.as_bytes());
        self
    }

    pub fn peer(mut self, peer: &str) -> Self {
        self.peer = Some(peer.to_owned());
        self
    }

    pub fn no_peer(mut self) -> Self {
        self.peer = None;
        self
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    pub fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self
    }

    pub fn upstream(mut self, response: Response) -> Self {
        self.upstream = response;
        self
    }

    fn set_header(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_owned(), value.to_vec()));
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 from an upstream that advertises its stack.
    pub fn ok() -> Self {
        Self::with_status(200)
    }

    pub fn with_status(status: u16) -> Self {
        Self {
            status,
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("server".into(), b"uvicorn".to_vec()),
                ("x-powered-by".into(), b"FastAPI".to_vec()),
            ],
            body: b"{\"ok\":true}".to_vec(),
        }
    }

    /// The first value of `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Every value of `name`.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
    }

    /// Headers as text pairs, without pseudo-headers.
    pub fn text_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }
}

/// How one request went.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The filter answered itself.
    pub local: bool,
    /// What the downstream received.
    pub response: Response,
    /// The request headers as they went upstream (`None` for a local reply).
    pub upstream_request: Option<Vec<(String, Vec<u8>)>>,
    /// Wasm instructions (fuel) the filter spent on this request, both phases.
    pub fuel: u64,
    /// The part of `fuel` spent in the request phase.
    pub request_fuel: u64,
    /// The gRPC calls the filter made for this request.
    pub grpc_calls: Vec<GrpcCall>,
    /// Tokens of calls the filter cancelled.
    pub grpc_cancelled: Vec<u32>,
    /// The downstream went away while the filter waited (a [`GrpcAnswer::Hang`]).
    pub reset: bool,
}

/// Where a [`Plugin`] runs the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The built `.wasm` ([`FilterModule::built`]) under wasmtime: what Envoy runs.
    Wasm,
    /// `portcullis-envoy` compiled for the host and linked into this binary, its host calls
    /// answered by the same host code: the filter's own lines become measurable by coverage.
    /// One native plugin must stay on the thread that started it.
    #[cfg(feature = "native")]
    Native,
}

impl Backend {
    /// Every backend this build has.
    pub const ALL: &[Backend] = &[
        Backend::Wasm,
        #[cfg(feature = "native")]
        Backend::Native,
    ];
}

/// The `proxy_on_*` callbacks the host invokes, with their arguments.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Callback {
    ContextCreate { id: u32, parent: u32 },
    VmStart { root: u32 },
    Configure { root: u32, size: u32 },
    RequestHeaders { id: u32, headers: u32, end: bool },
    RequestBody { id: u32, size: u32, end: bool },
    RequestTrailers { id: u32, trailers: u32 },
    ResponseHeaders { id: u32, headers: u32, end: bool },
    Done { id: u32 },
    Log { id: u32 },
    Delete { id: u32 },
    Tick { root: u32 },
    GrpcReceive { id: u32, token: u32, size: u32 },
    GrpcClose { id: u32, token: u32, status: u32 },
}

/// What differs between backends: how a callback reaches the filter. What the host calls do
/// is shared ([`abi`]).
pub(crate) trait Vm: Send {
    fn state(&self) -> &abi::State;
    fn state_mut(&mut self) -> &mut abi::State;
    fn next_context_id(&mut self) -> u32;
    /// Invokes a callback; its return value (an `Action`, or a bool as 0/1), 0 for `void` ones.
    fn call(&mut self, callback: Callback) -> Result<u32>;
    /// Fuel left; constant where instructions are not counted.
    fn fuel(&self) -> Result<u64>;
    /// The size of the guest's linear memory; `None` natively, where there is none.
    fn memory_bytes(&mut self) -> Option<usize> {
        None
    }
}

/// Action codes of the ABI.
const CONTINUE: u32 = 0;

/// One VM of the filter.
pub struct Plugin {
    vm: Box<dyn Vm>,
    root_id: u32,
    host: Host,
}

fn count(headers: &[(String, Vec<u8>)]) -> u32 {
    u32::try_from(headers.len()).unwrap_or(u32::MAX)
}

impl Plugin {
    fn start(host: Host, mut vm: Box<dyn Vm>, config: &[u8]) -> Result<Self> {
        let root_id = vm.next_context_id();
        vm.call(Callback::ContextCreate { id: root_id, parent: 0 })?;
        if vm.call(Callback::VmStart { root: root_id })? == 0 {
            wasmtime::bail!("proxy_on_vm_start returned false; log: {:?}", vm.state().logs);
        }
        let size = u32::try_from(config.len()).map_err(|_| wasmtime::format_err!("config too large"))?;
        if vm.call(Callback::Configure { root: root_id, size })? == 0 {
            wasmtime::bail!("configuration rejected; log: {:?}", vm.state().logs);
        }
        Ok(Self { vm, root_id, host })
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Log lines the plugin wrote, with their proxy-wasm level (0 trace … 5 critical).
    pub fn logs(&self) -> &[(u32, String)] {
        &self.vm.state().logs
    }

    /// The timer period the plugin asked for, if it did.
    pub fn tick_period(&self) -> Option<Duration> {
        self.vm.state().tick_period_ms.map(|ms| Duration::from_millis(ms.into()))
    }

    /// Fires the root context's timer, as Envoy does every tick period, and answers the calls
    /// the root context made from it.
    pub fn tick(&mut self) -> Result<()> {
        self.vm.call(Callback::Tick { root: self.root_id })?;
        self.answer_grpc_calls(self.root_id)?;
        Ok(())
    }

    /// The gRPC calls this VM made since its last request began (its root context's, on ticks).
    pub fn root_grpc_calls(&self) -> &[GrpcCall] {
        &self.vm.state().grpc_log
    }

    /// Sends one request without a body through the filter; a forwarded one is answered by
    /// `request.upstream`.
    /// The size of the VM's linear memory (Wasm only): it grows when the filter's heap does,
    /// and never shrinks.
    pub fn memory_bytes(&mut self) -> Option<usize> {
        self.vm.memory_bytes()
    }

    pub fn send(&mut self, request: &HttpRequest) -> Result<Exchange> {
        self.send_with_body(request, &[], false)
    }

    /// Sends one request whose headers are followed by a body of `body` (if not empty) and then
    /// trailers (if `trailers`). The filter must let the rest of a forwarded request through
    /// and hold back the rest of one it answered itself; anything else is an error.
    pub fn send_with_body(&mut self, request: &HttpRequest, body: &[u8], trailers: bool) -> Result<Exchange> {
        let id = self.vm.next_context_id();
        let fuel_before = self.vm.fuel()?;
        {
            let state = self.vm.state_mut();
            state.begin(request);
            if let Some(trace) = state.fuel_trace.as_mut() {
                trace.clear();
                state.last_fuel = Some(fuel_before);
            }
        }
        self.vm.call(Callback::ContextCreate { id, parent: self.root_id })?;
        let headers = count(&request.headers);
        let end = body.is_empty() && !trailers;
        let action = self.vm.call(Callback::RequestHeaders { id, headers, end })?;
        let request_fuel = fuel_before.saturating_sub(self.vm.fuel()?);
        if action != CONTINUE && self.vm.state().local_response.is_none() {
            // Paused for calls out: answer them as Envoy would, then the filter must have
            // answered the request or resumed it.
            if self.answer_grpc_calls(id)? {
                let grpc_calls = self.vm.state().grpc_log.clone();
                self.finish(id)?;
                let grpc_cancelled = self.vm.state().grpc_cancelled.clone();
                let response = Response { status: 0, headers: Vec::new(), body: Vec::new() };
                return Ok(Exchange {
                    local: false,
                    response,
                    upstream_request: None,
                    fuel: 0,
                    request_fuel,
                    grpc_calls,
                    grpc_cancelled,
                    reset: true,
                });
            }
            let state = self.vm.state_mut();
            if state.local_response.is_none() && !std::mem::take(&mut state.continued) {
                wasmtime::bail!("the filter paused the request without answering or resuming it");
            }
        }
        let local = self.vm.state_mut().local_response.take();
        let mut rest = Vec::new();
        if !body.is_empty() {
            let size = u32::try_from(body.len()).map_err(|_| wasmtime::format_err!("body too large"))?;
            rest.push(("body", self.vm.call(Callback::RequestBody { id, size, end: !trailers })?));
        }
        if trailers {
            rest.push(("trailers", self.vm.call(Callback::RequestTrailers { id, trailers: 1 })?));
        }
        for (part, action) in rest {
            match (local.is_some(), action == CONTINUE) {
                (true, true) => wasmtime::bail!("the filter let the {part} of a request it answered through"),
                (false, false) => wasmtime::bail!("the filter paused the {part} of a forwarded request"),
                _ => {}
            }
        }

        let exchange = if let Some(mut response) = local {
            response.headers.retain(|(n, _)| n != ":status");
            if self.host.local_reply_through_response_phase {
                response = self.response_phase(id, &response)?;
            }
            let grpc_calls = self.vm.state().grpc_log.clone();
            Exchange {
                local: true,
                response,
                upstream_request: None,
                fuel: 0,
                request_fuel,
                grpc_calls,
                grpc_cancelled: Vec::new(),
                reset: false,
            }
        } else {
            let upstream_request = self.vm.state().request_headers.clone();
            let grpc_calls = self.vm.state().grpc_log.clone();
            Exchange {
                local: false,
                response: self.response_phase(id, &request.upstream)?,
                upstream_request: Some(upstream_request),
                fuel: 0,
                request_fuel,
                grpc_calls,
                grpc_cancelled: Vec::new(),
                reset: false,
            }
        };
        self.finish(id)?;
        let fuel_after = self.vm.fuel()?;
        let fuel = fuel_before.saturating_sub(fuel_after);
        let state = self.vm.state_mut();
        if let (Some(trace), Some(last)) = (state.fuel_trace.as_mut(), state.last_fuel) {
            trace.push(("(end of request)", last.saturating_sub(fuel_after)));
            eprintln!("fuel trace, instructions before each host call: {trace:?}");
        }
        Ok(Exchange { fuel, ..exchange })
    }

    /// Answers the plugin's outstanding gRPC calls through their clusters. Returns whether the
    /// downstream went away instead (a call that hangs).
    fn answer_grpc_calls(&mut self, id: u32) -> Result<bool> {
        while let Some(call) = self.vm.state_mut().grpc_calls.first().cloned() {
            let answer = match self.host.grpc_upstream(&call.cluster) {
                Some(upstream) => upstream.call(&call),
                None => GrpcAnswer::Status(14),
            };
            let state = self.vm.state_mut();
            state.grpc_calls.retain(|c| c.token != call.token);
            match answer {
                GrpcAnswer::Message(bytes) => {
                    let size = u32::try_from(bytes.len()).map_err(|_| wasmtime::format_err!("answer too large"))?;
                    state.grpc_receive = bytes;
                    self.vm.call(Callback::GrpcReceive { id, token: call.token, size })?;
                    self.vm.state_mut().grpc_receive.clear();
                }
                GrpcAnswer::Status(status) => {
                    self.vm.call(Callback::GrpcClose { id, token: call.token, status })?;
                }
                GrpcAnswer::Timeout => {
                    self.vm.call(Callback::GrpcClose { id, token: call.token, status: 4 })?;
                }
                GrpcAnswer::Hang => {
                    // Still in flight when the stream ends: the plugin should cancel it.
                    state.grpc_calls.insert(0, call);
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// A reply Envoy makes itself before the filter saw the request (a malformed request, say):
    /// only the response phase of a new stream runs. Returns the reply as the downstream gets it.
    pub fn envoy_reply(&mut self, tls: bool, reply: &Response) -> Result<Response> {
        let id = self.vm.next_context_id();
        let mut request = HttpRequest::get("/").no_peer();
        request.tls = tls;
        self.vm.state_mut().begin(&request);
        self.vm.call(Callback::ContextCreate { id, parent: self.root_id })?;
        let response = self.response_phase(id, reply)?;
        self.finish(id)?;
        Ok(response)
    }

    /// Runs the response-headers callback over `response` and returns it as the filter left it.
    fn response_phase(&mut self, id: u32, response: &Response) -> Result<Response> {
        let mut headers = response.headers.clone();
        headers.insert(0, (":status".into(), response.status.to_string().into_bytes()));
        let count = count(&headers);
        self.vm.state_mut().response_headers = headers;
        self.vm.call(Callback::ResponseHeaders { id, headers: count, end: false })?;
        let mut headers = std::mem::take(&mut self.vm.state_mut().response_headers);
        let status = headers
            .iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(response.status);
        headers.retain(|(n, _)| n != ":status");
        Ok(Response { status, headers, body: response.body.clone() })
    }

    fn finish(&mut self, id: u32) -> Result<()> {
        self.vm.call(Callback::Done { id })?;
        self.vm.call(Callback::Log { id })?;
        self.vm.call(Callback::Delete { id })?;
        Ok(())
    }
}

/// One `#[test]` per backend for each named `fn name(backend: Backend)` of the calling test
/// file: `wasm::name` and `native::name`, so one body states the behaviour both must show.
#[macro_export]
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {
        mod wasm {
            $( #[test] fn $name() { super::$name($crate::Backend::Wasm) } )*
        }
        #[cfg(feature = "native")]
        mod native {
            $( #[test] fn $name() { super::$name($crate::Backend::Native) } )*
        }
    };
}
