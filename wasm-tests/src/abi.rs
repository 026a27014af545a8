//! The host side of the proxy-wasm ABI 0.2.1, once for every backend: what each host call the
//! filter imports does to the per-VM [`State`] and the process-wide [`Host`]. A backend only
//! supplies a [`Guest`]: access to the calling VM's memory and allocator, so the same semantics
//! answer the `.wasm` under wasmtime and the filter crate linked natively.

use std::collections::HashMap;

use wasmtime::{Result, bail, format_err};

use crate::{GrpcCall, Host, HttpRequest, Response, SharedValue};

// Status codes of the ABI.
pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const BAD_ARGUMENT: u32 = 2;
pub const PARSE_FAILURE: u32 = 4;
pub const CAS_MISMATCH: u32 = 8;
pub const INTERNAL_FAILURE: u32 = 10;

// Map and buffer types used by the filter.
const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const PLUGIN_CONFIGURATION: u32 = 7;
const GRPC_RECEIVE_BUFFER: u32 = 5;
/// `proxy_continue_stream`'s stream type of the request.
const HTTP_REQUEST_STREAM: u32 = 0;

/// Per-VM state: what the current stream looks like and what the plugin did.
pub struct State {
    pub host: Host,
    plugin_config: Vec<u8>,
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub response_headers: Vec<(String, Vec<u8>)>,
    properties: HashMap<String, Vec<u8>>,
    pub local_response: Option<Response>,
    pub logs: Vec<(u32, String)>,
    pub tick_period_ms: Option<u32>,
    /// A host call failed in a way that traps under wasmtime; the native backend reports it
    /// when the callback returns.
    pub fault: Option<wasmtime::Error>,
    /// With `PORTCULLIS_FUEL_TRACE` set under wasmtime: fuel remaining at the previous host
    /// call, and the instructions spent before each host call since — a cheap profile.
    pub last_fuel: Option<u64>,
    pub fuel_trace: Option<Vec<(&'static str, u64)>>,
    /// gRPC calls the plugin made and the host has not answered yet.
    pub grpc_calls: Vec<GrpcCall>,
    /// Every gRPC call of the current stream, answered or not.
    pub grpc_log: Vec<GrpcCall>,
    /// Tokens the plugin cancelled.
    pub grpc_cancelled: Vec<u32>,
    /// The answer being delivered (`proxy_on_grpc_receive`), read as the gRPC receive buffer.
    pub grpc_receive: Vec<u8>,
    /// The plugin resumed the paused request (`proxy_continue_stream`).
    pub continued: bool,
}

impl State {
    pub fn new(host: Host, plugin_config: Vec<u8>) -> Self {
        Self {
            host,
            plugin_config,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            properties: HashMap::new(),
            local_response: None,
            logs: Vec::new(),
            tick_period_ms: None,
            fault: None,
            last_fuel: None,
            fuel_trace: None,
            grpc_calls: Vec::new(),
            grpc_log: Vec::new(),
            grpc_cancelled: Vec::new(),
            grpc_receive: Vec::new(),
            continued: false,
        }
    }

    pub fn begin(&mut self, request: &HttpRequest) {
        self.request_headers = request.headers.clone();
        self.response_headers.clear();
        self.local_response = None;
        self.properties.clear();
        self.grpc_calls.clear();
        self.grpc_log.clear();
        self.grpc_cancelled.clear();
        self.grpc_receive.clear();
        self.continued = false;
        if let Some(peer) = &request.peer {
            self.properties.insert("source\0address".into(), peer.as_bytes().to_vec());
        }
        if request.tls {
            self.properties.insert("connection\0tls_version".into(), b"TLSv1.3".to_vec());
        }
    }

    fn map(&mut self, map_type: u32) -> Result<&mut Vec<(String, Vec<u8>)>> {
        match map_type {
            REQUEST_HEADERS => Ok(&mut self.request_headers),
            RESPONSE_HEADERS => Ok(&mut self.response_headers),
            other => bail!("the filter asked for header map type {other}, which this host does not model"),
        }
    }
}

/// The VM making a host call. Addresses are guest addresses: offsets into linear memory under
/// wasmtime, plain pointers natively.
pub trait Guest {
    fn state(&mut self) -> &mut State;
    fn read(&mut self, addr: usize, len: usize) -> Result<Vec<u8>>;
    fn write(&mut self, addr: usize, bytes: &[u8]) -> Result<()>;
    /// Memory from the guest's own allocator (`proxy_on_memory_allocate`), which the SDK frees.
    fn allocate(&mut self, len: usize) -> Result<usize>;
    /// Bytes of the guest's `usize`: 4 on wasm32.
    fn pointer_width(&self) -> usize;
    /// Called on entry to every host call, for profiling.
    fn enter(&mut self, _call: &'static str) {}
}

fn read_string(g: &mut impl Guest, ptr: usize, len: usize) -> Result<String> {
    String::from_utf8(g.read(ptr, len)?).map_err(|_| format_err!("the filter passed a non-UTF-8 name"))
}

pub fn write_u32(g: &mut impl Guest, ptr: usize, value: u32) -> Result<()> {
    g.write(ptr, &value.to_le_bytes())
}

/// A pointer or size the SDK passed as `*mut usize`.
fn write_usize(g: &mut impl Guest, ptr: usize, value: usize) -> Result<()> {
    let width = g.pointer_width();
    let bytes = (value as u64).to_le_bytes();
    if width < 8 && (value as u64) >> (8 * width) != 0 {
        bail!("{value} does not fit the guest's {width}-byte usize");
    }
    g.write(ptr, &bytes[..width])
}

/// Hands `bytes` to the plugin: memory from its allocator, pointer and size written where it asked.
fn give(g: &mut impl Guest, bytes: &[u8], data_ptr: usize, size_ptr: usize) -> Result<()> {
    if bytes.is_empty() {
        // The SDK reads a null pointer as "no data"; an allocation of zero bytes is not portable.
        write_usize(g, data_ptr, 0)?;
        return write_usize(g, size_ptr, 0);
    }
    let ptr = g.allocate(bytes.len())?;
    if ptr == 0 {
        bail!("proxy_on_memory_allocate({}) returned null", bytes.len());
    }
    g.write(ptr, bytes)?;
    write_usize(g, data_ptr, ptr)?;
    write_usize(g, size_ptr, bytes.len())
}

/// `u32 count`, `count × (u32 key len, u32 value len)`, then `key\0value\0` each.
pub fn serialize_map(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

pub fn deserialize_map(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let word = |at: usize| -> Result<usize> {
        let slice = bytes.get(at..at + 4).ok_or_else(|| format_err!("truncated header map"))?;
        Ok(u32::from_le_bytes([slice[0], slice[1], slice[2], slice[3]]) as usize)
    };
    let count = word(0)?;
    let mut data = 4 + count * 8;
    let mut map = Vec::with_capacity(count);
    for i in 0..count {
        let (klen, vlen) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let key = bytes.get(data..data + klen).ok_or_else(|| format_err!("truncated header map"))?;
        data += klen + 1;
        let value = bytes.get(data..data + vlen).ok_or_else(|| format_err!("truncated header map"))?;
        data += vlen + 1;
        let key = String::from_utf8(key.to_vec()).map_err(|_| format_err!("non-UTF-8 header name"))?;
        map.push((key, value.to_vec()));
    }
    Ok(map)
}

pub fn log(g: &mut impl Guest, level: u32, ptr: usize, len: usize) -> Result<u32> {
    g.enter("proxy_log");
    let message = String::from_utf8_lossy(&g.read(ptr, len)?).into_owned();
    g.state().logs.push((level, message));
    Ok(OK)
}

pub fn get_current_time_nanoseconds(g: &mut impl Guest, ptr: usize) -> Result<u32> {
    g.enter("proxy_get_current_time_nanoseconds");
    let now = g.state().host.now_nanos();
    g.write(ptr, &now.to_le_bytes())?;
    Ok(OK)
}

pub fn set_tick_period_milliseconds(g: &mut impl Guest, period: u32) -> Result<u32> {
    g.enter("proxy_set_tick_period_milliseconds");
    g.state().tick_period_ms = Some(period);
    Ok(OK)
}

pub fn get_buffer_bytes(
    g: &mut impl Guest,
    kind: u32,
    start: usize,
    max: usize,
    data_ptr: usize,
    size_ptr: usize,
) -> Result<u32> {
    g.enter("proxy_get_buffer_bytes");
    let config = match kind {
        PLUGIN_CONFIGURATION => g.state().plugin_config.clone(),
        GRPC_RECEIVE_BUFFER => g.state().grpc_receive.clone(),
        _ => bail!("the filter read buffer type {kind}, which this host does not model"),
    };
    if config.is_empty() {
        return Ok(NOT_FOUND);
    }
    let start = start.min(config.len());
    let end = start.saturating_add(max).min(config.len());
    give(g, &config[start..end], data_ptr, size_ptr)?;
    Ok(OK)
}

pub fn get_header_map_pairs(g: &mut impl Guest, map: u32, data_ptr: usize, size_ptr: usize) -> Result<u32> {
    g.enter("proxy_get_header_map_pairs");
    let bytes = serialize_map(g.state().map(map)?);
    give(g, &bytes, data_ptr, size_ptr)?;
    Ok(OK)
}

pub fn set_header_map_pairs(g: &mut impl Guest, map: u32, ptr: usize, len: usize) -> Result<u32> {
    g.enter("proxy_set_header_map_pairs");
    let pairs = deserialize_map(&g.read(ptr, len)?)?;
    *g.state().map(map)? = pairs;
    Ok(OK)
}

pub fn get_header_map_value(
    g: &mut impl Guest,
    map: u32,
    (kptr, klen): (usize, usize),
    data_ptr: usize,
    size_ptr: usize,
) -> Result<u32> {
    g.enter("proxy_get_header_map_value");
    let key = read_string(g, kptr, klen)?;
    let value = g.state().map(map)?.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key)).map(|(_, v)| v.clone());
    match value {
        Some(value) => {
            give(g, &value, data_ptr, size_ptr)?;
            Ok(OK)
        }
        None => Ok(NOT_FOUND),
    }
}

/// `proxy_replace_header_map_value` (`replace`) and `proxy_add_header_map_value`.
pub fn put_header_map_value(
    g: &mut impl Guest,
    map: u32,
    (kptr, klen): (usize, usize),
    (vptr, vlen): (usize, usize),
    replace: bool,
) -> Result<u32> {
    g.enter(if replace { "proxy_replace_header_map_value" } else { "proxy_add_header_map_value" });
    let key = read_string(g, kptr, klen)?.to_ascii_lowercase();
    let value = g.read(vptr, vlen)?;
    let headers = g.state().map(map)?;
    if replace {
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
    }
    headers.push((key, value));
    Ok(OK)
}

pub fn remove_header_map_value(g: &mut impl Guest, map: u32, kptr: usize, klen: usize) -> Result<u32> {
    g.enter("proxy_remove_header_map_value");
    let key = read_string(g, kptr, klen)?;
    g.state().map(map)?.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
    Ok(OK)
}

pub fn get_property(g: &mut impl Guest, pptr: usize, plen: usize, data_ptr: usize, size_ptr: usize) -> Result<u32> {
    g.enter("proxy_get_property");
    let path = read_string(g, pptr, plen)?;
    match g.state().properties.get(&path).cloned() {
        Some(value) => {
            give(g, &value, data_ptr, size_ptr)?;
            Ok(OK)
        }
        None => Ok(NOT_FOUND),
    }
}

pub fn get_shared_data(
    g: &mut impl Guest,
    (kptr, klen): (usize, usize),
    data_ptr: usize,
    size_ptr: usize,
    cas_ptr: usize,
) -> Result<u32> {
    g.enter("proxy_get_shared_data");
    let key = read_string(g, kptr, klen)?;
    let value = g.state().host.shared.lock().map_err(|_| format_err!("shared data poisoned"))?.get(&key).cloned();
    match value {
        Some(SharedValue { bytes, cas }) => {
            give(g, &bytes, data_ptr, size_ptr)?;
            write_u32(g, cas_ptr, cas)?;
            Ok(OK)
        }
        None => Ok(NOT_FOUND),
    }
}

pub fn set_shared_data(
    g: &mut impl Guest,
    (kptr, klen): (usize, usize),
    (vptr, vlen): (usize, usize),
    cas: u32,
) -> Result<u32> {
    g.enter("proxy_set_shared_data");
    let key = read_string(g, kptr, klen)?;
    let bytes = g.read(vptr, vlen)?;
    let host = g.state().host.clone();
    let mut shared = host.shared.lock().map_err(|_| format_err!("shared data poisoned"))?;
    let current = shared.get(&key).map(|v| v.cas);
    if cas != 0 && host.take_contention() {
        // Another worker wrote the key between this VM's read and its write.
        if let Some(value) = shared.get_mut(&key) {
            value.cas = value.cas.wrapping_add(1).max(1);
        }
        return Ok(CAS_MISMATCH);
    }
    // Envoy's semantics: CAS 0 writes unconditionally; otherwise it must match.
    if cas != 0 && current != Some(cas) {
        return Ok(CAS_MISMATCH);
    }
    let next = current.unwrap_or(0).wrapping_add(1).max(1);
    shared.insert(key, SharedValue { bytes, cas: next });
    Ok(OK)
}

pub struct LocalResponse {
    pub status: u32,
    pub body: (usize, usize),
    pub headers: (usize, usize),
}

pub fn send_local_response(g: &mut impl Guest, reply: LocalResponse) -> Result<u32> {
    g.enter("proxy_send_local_response");
    let body = g.read(reply.body.0, reply.body.1)?;
    let mut headers = deserialize_map(&g.read(reply.headers.0, reply.headers.1)?)?;
    let status = u16::try_from(reply.status).map_err(|_| format_err!("status {} out of range", reply.status))?;
    headers.insert(0, (":status".into(), status.to_string().into_bytes()));
    let state = g.state();
    if state.local_response.is_some() {
        return Ok(BAD_ARGUMENT);
    }
    state.local_response = Some(Response { status, headers, body });
    Ok(OK)
}

pub fn define_metric(g: &mut impl Guest, kind: u32, (nptr, nlen): (usize, usize), id_ptr: usize) -> Result<u32> {
    g.enter("proxy_define_metric");
    if kind != 0 {
        bail!("the filter defined a metric of type {kind}; only counters are modelled");
    }
    let name = read_string(g, nptr, nlen)?;
    let host = g.state().host.clone();
    let id = {
        let mut metrics = host.metrics.lock().map_err(|_| format_err!("metrics poisoned"))?;
        match metrics.by_name.get(&name) {
            Some(id) => *id,
            None => {
                let id = metrics.values.len() as u32;
                metrics.values.push((name.clone(), 0));
                metrics.by_name.insert(name, id);
                id
            }
        }
    };
    write_u32(g, id_ptr, id)?;
    Ok(OK)
}

pub fn increment_metric(g: &mut impl Guest, id: u32, offset: i64) -> Result<u32> {
    g.enter("proxy_increment_metric");
    let host = g.state().host.clone();
    let mut metrics = host.metrics.lock().map_err(|_| format_err!("metrics poisoned"))?;
    match metrics.values.get_mut(id as usize) {
        Some((_, value)) => {
            *value += offset;
            Ok(OK)
        }
        None => Ok(NOT_FOUND),
    }
}

/// The spans of `proxy_grpc_call`'s arguments.
pub struct GrpcCallArgs {
    pub upstream: (usize, usize),
    pub service: (usize, usize),
    pub method: (usize, usize),
    pub metadata: (usize, usize),
    pub message: (usize, usize),
    pub timeout_ms: u32,
    pub token_ptr: usize,
}

/// `proxy_grpc_call`: Envoy answers `ParseFailure` for a cluster it does not know, at once.
pub fn grpc_call(g: &mut impl Guest, args: GrpcCallArgs) -> Result<u32> {
    g.enter("proxy_grpc_call");
    let cluster = read_string(g, args.upstream.0, args.upstream.1)?;
    if !g.state().host.has_grpc_cluster(&cluster) {
        return Ok(PARSE_FAILURE);
    }
    let service = read_string(g, args.service.0, args.service.1)?;
    let method = read_string(g, args.method.0, args.method.1)?;
    let metadata = deserialize_map(&g.read(args.metadata.0, args.metadata.1)?)?;
    let message = g.read(args.message.0, args.message.1)?;
    let state = g.state();
    // Unique across the host's VMs: native plugins on one thread share the SDK's dispatcher,
    // which refuses a token it already waits on (Envoy's are unique per VM).
    let token = state.host.next_grpc_token();
    let call = GrpcCall { token, cluster, service, method, metadata, message, timeout_ms: args.timeout_ms };
    state.grpc_log.push(call.clone());
    state.grpc_calls.push(call);
    write_u32(g, args.token_ptr, token)?;
    Ok(OK)
}

pub fn grpc_cancel(g: &mut impl Guest, token: u32) -> Result<u32> {
    g.enter("proxy_grpc_cancel");
    let state = g.state();
    let before = state.grpc_calls.len();
    state.grpc_calls.retain(|call| call.token != token);
    if state.grpc_calls.len() == before {
        return Ok(NOT_FOUND);
    }
    state.grpc_cancelled.push(token);
    Ok(OK)
}

pub fn continue_stream(g: &mut impl Guest, stream: u32) -> Result<u32> {
    g.enter("proxy_continue_stream");
    if stream != HTTP_REQUEST_STREAM {
        bail!("the filter resumed stream type {stream}; only the request is modelled");
    }
    g.state().continued = true;
    Ok(OK)
}

pub fn set_effective_context(g: &mut impl Guest, _context_id: u32) -> Result<u32> {
    g.enter("proxy_set_effective_context");
    Ok(OK)
}
