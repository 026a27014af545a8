//! A proxy-wasm ABI 0.2.1 host on wasmtime that loads the built Portcullis filter.
//!
//! The API follows "build a plugin, send a request, inspect the outcome": a [`Host`] owns what
//! Envoy keeps process-wide (shared data, metrics, the clock); each [`Plugin`] is one VM, as one
//! Envoy worker thread has. Two plugins of one host share their shared data like two workers do.
//!
//! Hand-written because the public proxy-wasm test framework cannot load ABI 0.2.1 modules and
//! pins a wasmtime that no longer builds here.

mod abi;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine, Instance, Linker, Module, Store, TypedFunc};

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

/// What Envoy keeps process-wide.
#[derive(Clone)]
pub struct Host {
    shared: Arc<Mutex<HashMap<String, SharedValue>>>,
    metrics: Arc<Mutex<Metrics>>,
    clock: Arc<AtomicU64>,
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
            shared: Arc::default(),
            metrics: Arc::default(),
            clock: Arc::new(AtomicU64::new(START_NANOS)),
            local_reply_through_response_phase: true,
        }
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
        Plugin::start(self.clone(), module, config.as_bytes())
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
}

/// One VM of the filter.
pub struct Plugin {
    store: Store<abi::State>,
    calls: abi::Exports,
    root_id: u32,
    next_id: u32,
    host: Host,
}

impl Plugin {
    fn start(host: Host, module: &FilterModule, config: &[u8]) -> Result<Self> {
        let state = abi::State::new(host.clone(), config.to_vec());
        let mut store = Store::new(&module.engine, state);
        store.set_fuel(u64::MAX / 2)?;
        let mut linker: Linker<abi::State> = Linker::new(&module.engine);
        abi::define(&mut linker)?;
        // Host calls the filter never makes trap loudly instead of failing instantiation.
        linker.define_unknown_imports_as_traps(&module.module)?;
        let instance: Instance = linker.instantiate(&mut store, &module.module)?;
        let calls = abi::Exports::find(&instance, &mut store)?;

        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ())?;
        }
        let root_id = 1;
        calls.context_create.call(&mut store, (root_id, 0))?;
        let vm_ok = calls.vm_start.call(&mut store, (root_id, 0))?;
        if vm_ok == 0 {
            wasmtime::bail!("proxy_on_vm_start returned false; log: {:?}", store.data().logs);
        }
        let config_len = u32::try_from(config.len()).map_err(|_| wasmtime::format_err!("config too large"))?;
        let configured = calls.configure.call(&mut store, (root_id, config_len))?;
        if configured == 0 {
            wasmtime::bail!("configuration rejected; log: {:?}", store.data().logs);
        }
        Ok(Self { store, calls, root_id, next_id: root_id + 1, host })
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Log lines the plugin wrote, with their proxy-wasm level (0 trace … 5 critical).
    pub fn logs(&self) -> &[(u32, String)] {
        &self.store.data().logs
    }

    /// Fires the root context's timer, as Envoy does every tick period.
    pub fn tick(&mut self) -> Result<()> {
        self.calls.tick.call(&mut self.store, self.root_id)
    }

    /// Sends one request through the filter; a forwarded one is answered by `request.upstream`.
    pub fn send(&mut self, request: &HttpRequest) -> Result<Exchange> {
        let id = self.next_id;
        self.next_id += 1;
        let fuel_before = self.store.get_fuel()?;
        {
            let state = self.store.data_mut();
            state.begin(request);
            if let Some(trace) = state.fuel_trace.as_mut() {
                trace.clear();
                state.last_fuel = Some(fuel_before);
            }
        }
        self.calls.context_create.call(&mut self.store, (id, self.root_id))?;
        let count = |headers: &[(String, Vec<u8>)]| u32::try_from(headers.len()).unwrap_or(u32::MAX);
        let action = self.calls.request_headers.call(&mut self.store, (id, count(&request.headers), 1))?;
        let request_fuel = fuel_before.saturating_sub(self.store.get_fuel()?);

        let exchange = if let Some(local) = self.store.data_mut().local_response.take() {
            let mut response = local;
            if self.host.local_reply_through_response_phase {
                self.store.data_mut().response_headers = response.headers.clone();
                self.calls.response_headers.call(&mut self.store, (id, count(&response.headers), 0))?;
                response.headers = std::mem::take(&mut self.store.data_mut().response_headers);
            }
            Exchange { local: true, response, upstream_request: None, fuel: 0, request_fuel }
        } else {
            if action != 0 {
                wasmtime::bail!("the filter paused the request without answering it");
            }
            let upstream_request = self.store.data().request_headers.clone();
            let mut upstream = request.upstream.clone();
            upstream.headers.insert(0, (":status".into(), upstream.status.to_string().into_bytes()));
            self.store.data_mut().response_headers = upstream.headers.clone();
            self.calls.response_headers.call(&mut self.store, (id, count(&upstream.headers), 0))?;
            let mut headers = std::mem::take(&mut self.store.data_mut().response_headers);
            let status = headers
                .iter()
                .find(|(n, _)| n == ":status")
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(upstream.status);
            headers.retain(|(n, _)| n != ":status");
            Exchange {
                local: false,
                response: Response { status, headers, body: upstream.body },
                upstream_request: Some(upstream_request),
                fuel: 0,
                request_fuel,
            }
        };

        self.calls.done.call(&mut self.store, id)?;
        self.calls.log.call(&mut self.store, id)?;
        self.calls.delete.call(&mut self.store, id)?;
        let fuel_after = self.store.get_fuel()?;
        let fuel = fuel_before.saturating_sub(fuel_after);
        let state = self.store.data_mut();
        if let (Some(trace), Some(last)) = (state.fuel_trace.as_mut(), state.last_fuel) {
            trace.push(("(end of request)", last.saturating_sub(fuel_after)));
            eprintln!("fuel trace, instructions before each host call: {trace:?}");
        }
        Ok(Exchange { fuel, ..exchange })
    }
}

pub(crate) type Call2 = TypedFunc<(u32, u32), u32>;
