//! The host side of the proxy-wasm ABI 0.2.1: the `env` functions a filter imports, the four
//! WASI functions a `wasm32-wasip1` build needs, and the callbacks the host invokes.

use std::collections::HashMap;

use wasmtime::{Caller, Extern, Instance, Linker, Memory, Result, Store, TypedFunc, bail, format_err};

use crate::{Call2, Host, HttpRequest, Response, SharedValue};

// Status codes of the ABI.
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const CAS_MISMATCH: i32 = 8;

// Map and buffer types used by the filter.
const REQUEST_HEADERS: i32 = 0;
const RESPONSE_HEADERS: i32 = 2;
const PLUGIN_CONFIGURATION: i32 = 7;

/// Per-VM state: what the current stream looks like and what the plugin did.
pub struct State {
    host: Host,
    plugin_config: Vec<u8>,
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub response_headers: Vec<(String, Vec<u8>)>,
    properties: HashMap<String, Vec<u8>>,
    pub local_response: Option<Response>,
    pub logs: Vec<(u32, String)>,
    /// With `PORTCULLIS_FUEL_TRACE` set: fuel remaining at the previous host call, and the
    /// instructions spent before each host call since — a cheap profile of the filter.
    pub last_fuel: Option<u64>,
    pub fuel_trace: Option<Vec<(&'static str, u64)>>,
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
            last_fuel: None,
            fuel_trace: std::env::var_os("PORTCULLIS_FUEL_TRACE").map(|_| Vec::new()),
        }
    }

    pub fn begin(&mut self, request: &HttpRequest) {
        self.request_headers = request.headers.clone();
        self.response_headers.clear();
        self.local_response = None;
        self.properties.clear();
        if let Some(peer) = &request.peer {
            self.properties.insert("source\0address".into(), peer.as_bytes().to_vec());
        }
        if request.tls {
            self.properties.insert("connection\0tls_version".into(), b"TLSv1.3".to_vec());
        }
    }

    fn map(&mut self, map_type: i32) -> Result<&mut Vec<(String, Vec<u8>)>> {
        match map_type {
            REQUEST_HEADERS => Ok(&mut self.request_headers),
            RESPONSE_HEADERS => Ok(&mut self.response_headers),
            other => bail!("the filter asked for header map type {other}, which this host does not model"),
        }
    }
}

/// The callbacks the host invokes.
pub struct Exports {
    pub context_create: TypedFunc<(u32, u32), ()>,
    pub vm_start: Call2,
    pub configure: Call2,
    pub request_headers: TypedFunc<(u32, u32, u32), u32>,
    pub response_headers: TypedFunc<(u32, u32, u32), u32>,
    pub done: TypedFunc<u32, u32>,
    pub log: TypedFunc<u32, ()>,
    pub delete: TypedFunc<u32, ()>,
    pub tick: TypedFunc<u32, ()>,
}

impl Exports {
    pub fn find(instance: &Instance, store: &mut Store<State>) -> Result<Self> {
        if instance.get_func(&mut *store, "proxy_abi_version_0_2_1").is_none() {
            bail!("the module does not export proxy_abi_version_0_2_1");
        }
        Ok(Self {
            context_create: instance.get_typed_func(&mut *store, "proxy_on_context_create")?,
            vm_start: instance.get_typed_func(&mut *store, "proxy_on_vm_start")?,
            configure: instance.get_typed_func(&mut *store, "proxy_on_configure")?,
            request_headers: instance.get_typed_func(&mut *store, "proxy_on_request_headers")?,
            response_headers: instance.get_typed_func(&mut *store, "proxy_on_response_headers")?,
            done: instance.get_typed_func(&mut *store, "proxy_on_done")?,
            log: instance.get_typed_func(&mut *store, "proxy_on_log")?,
            delete: instance.get_typed_func(&mut *store, "proxy_on_delete")?,
            tick: instance.get_typed_func(&mut *store, "proxy_on_tick")?,
        })
    }
}

/// Records the instructions the filter ran since the previous host call.
fn trace(caller: &mut Caller<'_, State>, call: &'static str) {
    if caller.data().fuel_trace.is_none() {
        return;
    }
    let Ok(now) = caller.get_fuel() else { return };
    let state = caller.data_mut();
    let spent = state.last_fuel.map_or(0, |before| before.saturating_sub(now));
    state.last_fuel = Some(now);
    if let Some(trace) = state.fuel_trace.as_mut() {
        trace.push((call, spent));
    }
}

fn memory(caller: &mut Caller<'_, State>) -> Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => bail!("the module exports no memory"),
    }
}

fn read(caller: &mut Caller<'_, State>, ptr: i32, len: i32) -> Result<Vec<u8>> {
    let memory = memory(caller)?;
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    memory
        .data(&*caller)
        .get(start..start.saturating_add(len))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format_err!("read of {len} bytes at {start} is outside guest memory"))
}

fn read_string(caller: &mut Caller<'_, State>, ptr: i32, len: i32) -> Result<String> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| format_err!("the filter passed a non-UTF-8 name"))
}

fn write(caller: &mut Caller<'_, State>, ptr: i32, bytes: &[u8]) -> Result<()> {
    let memory = memory(caller)?;
    let start = ptr as u32 as usize;
    memory
        .data_mut(&mut *caller)
        .get_mut(start..start.saturating_add(bytes.len()))
        .ok_or_else(|| format_err!("write of {} bytes at {start} is outside guest memory", bytes.len()))?
        .copy_from_slice(bytes);
    Ok(())
}

fn write_u32(caller: &mut Caller<'_, State>, ptr: i32, value: u32) -> Result<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the plugin: memory from its allocator, pointer and size written where it asked.
fn give(caller: &mut Caller<'_, State>, bytes: &[u8], data_ptr: i32, size_ptr: i32) -> Result<()> {
    if bytes.is_empty() {
        // The SDK reads a null pointer as "no data"; an allocation of zero bytes is not portable.
        write_u32(caller, data_ptr, 0)?;
        return write_u32(caller, size_ptr, 0);
    }
    let allocate = match caller.get_export("proxy_on_memory_allocate") {
        Some(Extern::Func(f)) => f.typed::<u32, u32>(&*caller)?,
        _ => bail!("the module exports no proxy_on_memory_allocate"),
    };
    let len = u32::try_from(bytes.len()).map_err(|_| format_err!("value too large for wasm32"))?;
    let ptr = allocate.call(&mut *caller, len)?;
    if ptr == 0 {
        bail!("proxy_on_memory_allocate({len}) returned null");
    }
    write(caller, ptr as i32, bytes)?;
    write_u32(caller, data_ptr, ptr)?;
    write_u32(caller, size_ptr, len)
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

pub fn define(linker: &mut Linker<State>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Caller<'_, State>, level: i32, ptr: i32, len: i32| -> Result<i32> {
            trace(&mut c, "proxy_log");
            let message = String::from_utf8_lossy(&read(&mut c, ptr, len)?).into_owned();
            c.data_mut().logs.push((level as u32, message));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, State>, ptr: i32| -> Result<i32> {
            trace(&mut c, "proxy_get_current_time_nanoseconds");
            let now = c.data().host.now_nanos();
            write(&mut c, ptr, &now.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", |_: Caller<'_, State>, _: i32| -> Result<i32> {
        Ok(OK)
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, State>, kind: i32, start: i32, max: i32, data_ptr: i32, size_ptr: i32| -> Result<i32> {
            trace(&mut c, "proxy_get_buffer_bytes");
            if kind != PLUGIN_CONFIGURATION {
                bail!("the filter read buffer type {kind}, which this host does not model");
            }
            let config = c.data().plugin_config.clone();
            let start = (start as u32 as usize).min(config.len());
            let end = start.saturating_add(max as u32 as usize).min(config.len());
            if config.is_empty() {
                return Ok(NOT_FOUND);
            }
            give(&mut c, &config[start..end], data_ptr, size_ptr)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, State>, map: i32, data_ptr: i32, size_ptr: i32| -> Result<i32> {
            trace(&mut c, "proxy_get_header_map_pairs");
            let bytes = serialize_map(c.data_mut().map(map)?);
            give(&mut c, &bytes, data_ptr, size_ptr)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, State>, map: i32, ptr: i32, len: i32| -> Result<i32> {
            trace(&mut c, "proxy_set_header_map_pairs");
            let pairs = deserialize_map(&read(&mut c, ptr, len)?)?;
            *c.data_mut().map(map)? = pairs;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, State>, map: i32, kptr: i32, klen: i32, data_ptr: i32, size_ptr: i32| -> Result<i32> {
            trace(&mut c, "proxy_get_header_map_value");
            let key = read_string(&mut c, kptr, klen)?;
            let value =
                c.data_mut().map(map)?.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key)).map(|(_, v)| v.clone());
            match value {
                Some(value) => {
                    give(&mut c, &value, data_ptr, size_ptr)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, State>, map: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> Result<i32> {
            trace(&mut c, "proxy_replace_header_map_value");
            let key = read_string(&mut c, kptr, klen)?.to_ascii_lowercase();
            let value = read(&mut c, vptr, vlen)?;
            let headers = c.data_mut().map(map)?;
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
            headers.push((key, value));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, State>, map: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> Result<i32> {
            trace(&mut c, "proxy_add_header_map_value");
            let key = read_string(&mut c, kptr, klen)?.to_ascii_lowercase();
            let value = read(&mut c, vptr, vlen)?;
            c.data_mut().map(map)?.push((key, value));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, State>, map: i32, kptr: i32, klen: i32| -> Result<i32> {
            trace(&mut c, "proxy_remove_header_map_value");
            let key = read_string(&mut c, kptr, klen)?;
            c.data_mut().map(map)?.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, State>, pptr: i32, plen: i32, data_ptr: i32, size_ptr: i32| -> Result<i32> {
            trace(&mut c, "proxy_get_property");
            let path = read_string(&mut c, pptr, plen)?;
            match c.data().properties.get(&path).cloned() {
                Some(value) => {
                    give(&mut c, &value, data_ptr, size_ptr)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, State>, kptr: i32, klen: i32, data_ptr: i32, size_ptr: i32, cas_ptr: i32| -> Result<i32> {
            trace(&mut c, "proxy_get_shared_data");
            let key = read_string(&mut c, kptr, klen)?;
            let value =
                c.data().host.shared.lock().map_err(|_| format_err!("shared data poisoned"))?.get(&key).cloned();
            match value {
                Some(SharedValue { bytes, cas }) => {
                    give(&mut c, &bytes, data_ptr, size_ptr)?;
                    write_u32(&mut c, cas_ptr, cas)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, State>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| -> Result<i32> {
            trace(&mut c, "proxy_set_shared_data");
            let key = read_string(&mut c, kptr, klen)?;
            let bytes = read(&mut c, vptr, vlen)?;
            let host = c.data().host.clone();
            let mut shared = host.shared.lock().map_err(|_| format_err!("shared data poisoned"))?;
            // Envoy's semantics: CAS 0 writes unconditionally; otherwise it must match.
            let current = shared.get(&key).map(|v| v.cas);
            if cas != 0 && current != Some(cas as u32) {
                return Ok(CAS_MISMATCH);
            }
            let next = current.unwrap_or(0).wrapping_add(1).max(1);
            shared.insert(key, SharedValue { bytes, cas: next });
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, State>,
         status: i32,
         _details_ptr: i32,
         _details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         _grpc: i32|
         -> Result<i32> {
            trace(&mut c, "proxy_send_local_response");
            let body = read(&mut c, body_ptr, body_len)?;
            let mut headers = deserialize_map(&read(&mut c, headers_ptr, headers_len)?)?;
            let status = u16::try_from(status).map_err(|_| format_err!("status {status} out of range"))?;
            headers.insert(0, (":status".into(), status.to_string().into_bytes()));
            if c.data().local_response.is_some() {
                return Ok(BAD_ARGUMENT);
            }
            c.data_mut().local_response = Some(Response { status, headers, body });
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, State>, kind: i32, nptr: i32, nlen: i32, id_ptr: i32| -> Result<i32> {
            trace(&mut c, "proxy_define_metric");
            if kind != 0 {
                bail!("the filter defined a metric of type {kind}; only counters are modelled");
            }
            let name = read_string(&mut c, nptr, nlen)?;
            let host = c.data().host.clone();
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
            write_u32(&mut c, id_ptr, id)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Caller<'_, State>, id: i32, offset: i64| -> Result<i32> {
            trace(&mut c, "proxy_increment_metric");
            let mut metrics = c.data().host.metrics.lock().map_err(|_| format_err!("metrics poisoned"))?;
            match metrics.values.get_mut(id as u32 as usize) {
                Some((_, value)) => {
                    *value += offset;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;

    // WASI: only what a wasm32-wasip1 Rust cdylib links. Output is kept as log lines so a panic
    // message from the filter shows up in the test failure.
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "environ_sizes_get",
        |mut c: Caller<'_, State>, count: i32, size: i32| -> Result<i32> {
            write_u32(&mut c, count, 0)?;
            write_u32(&mut c, size, 0)?;
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "environ_get",
        |_: Caller<'_, State>, _: i32, _: i32| -> Result<i32> { Ok(0) },
    )?;
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "fd_write",
        |mut c: Caller<'_, State>, _fd: i32, iovs: i32, iovs_len: i32, written_ptr: i32| -> Result<i32> {
            let mut written = 0u32;
            let mut text = Vec::new();
            for i in 0..iovs_len {
                let iov = read(&mut c, iovs + i * 8, 8)?;
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                text.extend(read(&mut c, ptr, len)?);
                written += len as u32;
            }
            c.data_mut().logs.push((5, String::from_utf8_lossy(&text).into_owned()));
            write_u32(&mut c, written_ptr, written)?;
            Ok(0)
        },
    )?;
    linker.func_wrap("wasi_snapshot_preview1", "proc_exit", |c: Caller<'_, State>, code: i32| -> Result<()> {
        bail!("the filter called proc_exit({code}); log: {:?}", c.data().logs)
    })?;
    Ok(())
}
