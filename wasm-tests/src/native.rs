//! The native backend: the filter crate linked into this binary for the host's target, so its
//! code runs — and is measured by line coverage — outside any VM.
//!
//! Compiled natively, the filter's ABI crate (`portcullis-proxy-abi`) still imports its host calls
//! as plain `extern "C"` symbols and exports its `proxy_on_*` callbacks as `#[no_mangle]` functions. This module
//! defines those imports, answering each through [`abi`] like the wasmtime backend does, and calls
//! the callbacks directly. Guest "addresses" are real pointers, and guest memory comes from the
//! filter's own `proxy_on_memory_allocate`, since the filter frees what it receives.
//!
//! The ABI crate keeps its contexts in thread-local dispatch tables, so one native VM is bound to the
//! thread that started it; two plugins on one thread are two root contexts of one dispatcher,
//! told apart by context ids that are unique per thread.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::Mutex;
use std::thread::ThreadId;

use wasmtime::{Error, Result, bail};

use crate::abi::{self, Guest, LocalResponse, State};
use crate::{Callback, Vm};

// Links the filter crate (and through it the ABI crate's callbacks) into every binary using this module.
use portcullis_envoy as _;

#[cfg(target_endian = "big")]
compile_error!("the native backend passes the ABI's little-endian words as native ones");

unsafe extern "C" {
    fn _initialize();
    fn proxy_on_memory_allocate(size: usize) -> *mut u8;
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
    fn proxy_on_request_headers(context_id: u32, num_headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32;
    fn proxy_on_request_trailers(context_id: u32, num_trailers: usize) -> u32;
    fn proxy_on_response_headers(context_id: u32, num_headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_log(context_id: u32);
    fn proxy_on_delete(context_id: u32);
    fn proxy_on_tick(context_id: u32);
    fn proxy_on_grpc_receive(context_id: u32, token_id: u32, response_size: usize);
    fn proxy_on_grpc_close(context_id: u32, token_id: u32, status_code: u32);
}

thread_local! {
    /// The state of the VM this thread is inside, for the duration of one callback; null otherwise.
    static CURRENT: Cell<*mut State> = const { Cell::new(std::ptr::null_mut()) };
    static NEXT_CONTEXT_ID: Cell<u32> = const { Cell::new(1) };
}

struct Native<'a>(&'a mut State);

impl Guest for Native<'_> {
    fn state(&mut self) -> &mut State {
        self.0
    }

    fn read(&mut self, addr: usize, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        if addr == 0 {
            bail!("the filter passed a null pointer for {len} bytes");
        }
        // SAFETY: the filter passes a pointer and length of a live slice for the duration of the call.
        Ok(unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec())
    }

    fn write(&mut self, addr: usize, bytes: &[u8]) -> Result<()> {
        if addr == 0 {
            bail!("the filter passed a null pointer to write {} bytes to", bytes.len());
        }
        // SAFETY: `addr` is either an out-parameter the filter passed for a value of this size or
        // a fresh allocation of at least `bytes.len()` from `allocate`. Byte copies need no alignment.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
        Ok(())
    }

    fn allocate(&mut self, len: usize) -> Result<usize> {
        // SAFETY: the filter's allocator takes any size and returns an owned buffer of that size.
        Ok(unsafe { proxy_on_memory_allocate(len) } as usize)
    }

    fn pointer_width(&self) -> usize {
        size_of::<usize>()
    }
}

/// Runs one host call against the current VM. An error cannot unwind through the filter's
/// `extern "C"` frames, so it is kept for the callback's caller and the filter gets
/// `InternalFailure`, which it handles as any failed host call.
fn host_call(call: impl FnOnce(&mut Native<'_>) -> Result<u32>) -> u32 {
    let current = CURRENT.get();
    if current.is_null() {
        return abi::INTERNAL_FAILURE;
    }
    // SAFETY: `NativeVm::call` points `CURRENT` at its state for exactly the duration of the
    // callback and does not touch the state meanwhile; host calls do not nest.
    let state = unsafe { &mut *current };
    call(&mut Native(state)).unwrap_or_else(|err| {
        eprintln!("native proxy-wasm host: {err:#}");
        state.fault.get_or_insert(err);
        abi::INTERNAL_FAILURE
    })
}

/// Log calls also arrive from outside any callback: the filter's panic hook is process-wide,
/// and a panic on another thread of the binary may reach it before the harness puts its own back.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_log(level: u32, ptr: usize, len: usize) -> u32 {
    if CURRENT.get().is_null() {
        return abi::OK;
    }
    host_call(|g| abi::log(g, level, ptr, len))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_get_current_time_nanoseconds(ptr: usize) -> u32 {
    host_call(|g| abi::get_current_time_nanoseconds(g, ptr))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_set_tick_period_milliseconds(period: u32) -> u32 {
    host_call(|g| abi::set_tick_period_milliseconds(g, period))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_get_buffer_bytes(kind: u32, start: usize, max: usize, data: usize, size: usize) -> u32 {
    host_call(|g| abi::get_buffer_bytes(g, kind, start, max, data, size))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_get_header_map_pairs(map: u32, data: usize, size: usize) -> u32 {
    host_call(|g| abi::get_header_map_pairs(g, map, data, size))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_set_header_map_pairs(map: u32, ptr: usize, len: usize) -> u32 {
    host_call(|g| abi::set_header_map_pairs(g, map, ptr, len))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_get_header_map_value(map: u32, kptr: usize, klen: usize, data: usize, size: usize) -> u32 {
    host_call(|g| abi::get_header_map_value(g, map, (kptr, klen), data, size))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_replace_header_map_value(map: u32, kptr: usize, klen: usize, vptr: usize, vlen: usize) -> u32 {
    host_call(|g| abi::put_header_map_value(g, map, (kptr, klen), (vptr, vlen), true))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_add_header_map_value(map: u32, kptr: usize, klen: usize, vptr: usize, vlen: usize) -> u32 {
    host_call(|g| abi::put_header_map_value(g, map, (kptr, klen), (vptr, vlen), false))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_remove_header_map_value(map: u32, kptr: usize, klen: usize) -> u32 {
    host_call(|g| abi::remove_header_map_value(g, map, kptr, klen))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_get_property(pptr: usize, plen: usize, data: usize, size: usize) -> u32 {
    host_call(|g| abi::get_property(g, pptr, plen, data, size))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_get_shared_data(kptr: usize, klen: usize, data: usize, size: usize, cas: usize) -> u32 {
    host_call(|g| abi::get_shared_data(g, (kptr, klen), data, size, cas))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_set_shared_data(kptr: usize, klen: usize, vptr: usize, vlen: usize, cas: u32) -> u32 {
    host_call(|g| abi::set_shared_data(g, (kptr, klen), (vptr, vlen), cas))
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn proxy_send_local_response(
    status: u32,
    _details_ptr: usize,
    _details_len: usize,
    body_ptr: usize,
    body_len: usize,
    headers_ptr: usize,
    headers_len: usize,
    _grpc_status: i32,
) -> u32 {
    let reply = LocalResponse { status, body: (body_ptr, body_len), headers: (headers_ptr, headers_len) };
    host_call(|g| abi::send_local_response(g, reply))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_define_metric(kind: u32, nptr: usize, nlen: usize, id: usize) -> u32 {
    host_call(|g| abi::define_metric(g, kind, (nptr, nlen), id))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_increment_metric(id: u32, offset: i64) -> u32 {
    host_call(|g| abi::increment_metric(g, id, offset))
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn proxy_grpc_call(
    upstream_ptr: usize,
    upstream_len: usize,
    service_ptr: usize,
    service_len: usize,
    method_ptr: usize,
    method_len: usize,
    metadata_ptr: usize,
    metadata_len: usize,
    message_ptr: usize,
    message_len: usize,
    timeout_ms: u32,
    token_ptr: usize,
) -> u32 {
    let args = abi::GrpcCallArgs {
        upstream: (upstream_ptr, upstream_len),
        service: (service_ptr, service_len),
        method: (method_ptr, method_len),
        metadata: (metadata_ptr, metadata_len),
        message: (message_ptr, message_len),
        timeout_ms,
        token_ptr,
    };
    host_call(|g| abi::grpc_call(g, args))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_grpc_cancel(token: u32) -> u32 {
    host_call(|g| abi::grpc_cancel(g, token))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_continue_stream(stream: u32) -> u32 {
    host_call(|g| abi::continue_stream(g, stream))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_set_effective_context(context_id: u32) -> u32 {
    host_call(|g| abi::set_effective_context(g, context_id))
}

/// The filter linked into this binary, seen as one VM.
pub struct NativeVm {
    state: State,
    thread: ThreadId,
}

impl NativeVm {
    pub fn start(state: State) -> Result<Self> {
        // The filter's `_initialize` sets a process-wide panic hook, so concurrent first calls
        // are serialised. Its hook would route test failures' messages into `proxy_log`; the
        // test harness's own hook is put back.
        static INITIALIZE: Mutex<()> = Mutex::new(());
        {
            let _once = INITIALIZE.lock().map_err(|_| Error::msg("initialisation poisoned"))?;
            let hook = std::panic::take_hook();
            // SAFETY: `_initialize` registers the filter's root context in this thread's dispatcher.
            unsafe { _initialize() };
            std::panic::set_hook(hook);
        }
        Ok(Self { state, thread: std::thread::current().id() })
    }
}

impl Vm for NativeVm {
    fn state(&self) -> &State {
        &self.state
    }

    fn state_mut(&mut self) -> &mut State {
        &mut self.state
    }

    fn next_context_id(&mut self) -> u32 {
        NEXT_CONTEXT_ID.with(|next| next.replace(next.get() + 1))
    }

    fn call(&mut self, callback: Callback) -> Result<u32> {
        if std::thread::current().id() != self.thread {
            bail!(
                "a native plugin runs only on the thread that started it (the ABI crate's dispatch tables are thread-local)"
            );
        }
        if !CURRENT.get().is_null() {
            bail!("a callback re-entered the native host");
        }
        CURRENT.set(&mut self.state);
        // SAFETY: the callbacks are the ABI crate's `#[no_mangle]` exports, with the ABI's signatures.
        let result = unsafe {
            match callback {
                Callback::ContextCreate { id, parent } => {
                    proxy_on_context_create(id, parent);
                    0
                }
                Callback::VmStart { root } => proxy_on_vm_start(root, 0).into(),
                Callback::Configure { root, size } => proxy_on_configure(root, size as usize).into(),
                Callback::RequestHeaders { id, headers, end } => proxy_on_request_headers(id, headers as usize, end),
                Callback::RequestBody { id, size, end } => proxy_on_request_body(id, size as usize, end),
                Callback::RequestTrailers { id, trailers } => proxy_on_request_trailers(id, trailers as usize),
                Callback::ResponseHeaders { id, headers, end } => proxy_on_response_headers(id, headers as usize, end),
                Callback::Done { id } => proxy_on_done(id).into(),
                Callback::Log { id } => {
                    proxy_on_log(id);
                    0
                }
                Callback::Delete { id } => {
                    proxy_on_delete(id);
                    0
                }
                Callback::Tick { root } => {
                    proxy_on_tick(root);
                    0
                }
                Callback::GrpcReceive { id, token, size } => {
                    proxy_on_grpc_receive(id, token, size as usize);
                    0
                }
                Callback::GrpcClose { id, token, status } => {
                    proxy_on_grpc_close(id, token, status);
                    0
                }
            }
        };
        CURRENT.set(std::ptr::null_mut());
        match self.state.fault.take() {
            Some(err) => Err(err),
            None => Ok(result),
        }
    }

    fn fuel(&self) -> Result<u64> {
        Ok(0)
    }
}
