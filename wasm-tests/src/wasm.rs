//! The wasmtime backend: the built `.wasm` in a [`Store`], its imports answered by [`abi`] over
//! guest linear memory, plus the four WASI functions a `wasm32-wasip1` build needs.

use wasmtime::{Caller, Extern, Instance, Linker, Memory, Result, Store, TypedFunc, bail, format_err};

use crate::abi::{self, Guest, LocalResponse, State};
use crate::{Callback, FilterModule, Vm};

/// A guest address or size as wasm32 passes it: an `i32` holding a `u32`.
fn at(value: i32) -> usize {
    value as u32 as usize
}

struct Wasm<'a, 'c>(&'a mut Caller<'c, State>);

impl Wasm<'_, '_> {
    fn memory(&mut self) -> Result<Memory> {
        match self.0.get_export("memory") {
            Some(Extern::Memory(memory)) => Ok(memory),
            _ => bail!("the module exports no memory"),
        }
    }
}

impl Guest for Wasm<'_, '_> {
    fn state(&mut self) -> &mut State {
        self.0.data_mut()
    }

    fn read(&mut self, addr: usize, len: usize) -> Result<Vec<u8>> {
        let memory = self.memory()?;
        memory
            .data(&*self.0)
            .get(addr..addr.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format_err!("read of {len} bytes at {addr} is outside guest memory"))
    }

    fn write(&mut self, addr: usize, bytes: &[u8]) -> Result<()> {
        let memory = self.memory()?;
        memory
            .data_mut(&mut *self.0)
            .get_mut(addr..addr.saturating_add(bytes.len()))
            .ok_or_else(|| format_err!("write of {} bytes at {addr} is outside guest memory", bytes.len()))?
            .copy_from_slice(bytes);
        Ok(())
    }

    fn allocate(&mut self, len: usize) -> Result<usize> {
        let allocate = match self.0.get_export("proxy_on_memory_allocate") {
            Some(Extern::Func(f)) => f.typed::<u32, u32>(&*self.0)?,
            _ => bail!("the module exports no proxy_on_memory_allocate"),
        };
        let len = u32::try_from(len).map_err(|_| format_err!("value too large for wasm32"))?;
        Ok(allocate.call(&mut *self.0, len)? as usize)
    }

    fn pointer_width(&self) -> usize {
        4
    }

    /// Records the instructions the filter ran since the previous host call.
    fn enter(&mut self, call: &'static str) {
        if self.0.data().fuel_trace.is_none() {
            return;
        }
        let Ok(now) = self.0.get_fuel() else { return };
        let state = self.0.data_mut();
        let spent = state.last_fuel.map_or(0, |before| before.saturating_sub(now));
        state.last_fuel = Some(now);
        if let Some(trace) = state.fuel_trace.as_mut() {
            trace.push((call, spent));
        }
    }
}

type Call2 = TypedFunc<(u32, u32), u32>;

/// The callbacks the host invokes.
struct Exports {
    context_create: TypedFunc<(u32, u32), ()>,
    vm_start: Call2,
    configure: Call2,
    request_headers: TypedFunc<(u32, u32, u32), u32>,
    request_body: TypedFunc<(u32, u32, u32), u32>,
    request_trailers: Call2,
    response_headers: TypedFunc<(u32, u32, u32), u32>,
    done: TypedFunc<u32, u32>,
    log: TypedFunc<u32, ()>,
    delete: TypedFunc<u32, ()>,
    tick: TypedFunc<u32, ()>,
    grpc_receive: TypedFunc<(u32, u32, u32), ()>,
    grpc_close: TypedFunc<(u32, u32, u32), ()>,
}

impl Exports {
    fn find(instance: &Instance, store: &mut Store<State>) -> Result<Self> {
        if instance.get_func(&mut *store, "proxy_abi_version_0_2_1").is_none() {
            bail!("the module does not export proxy_abi_version_0_2_1");
        }
        Ok(Self {
            context_create: instance.get_typed_func(&mut *store, "proxy_on_context_create")?,
            vm_start: instance.get_typed_func(&mut *store, "proxy_on_vm_start")?,
            configure: instance.get_typed_func(&mut *store, "proxy_on_configure")?,
            request_headers: instance.get_typed_func(&mut *store, "proxy_on_request_headers")?,
            request_body: instance.get_typed_func(&mut *store, "proxy_on_request_body")?,
            request_trailers: instance.get_typed_func(&mut *store, "proxy_on_request_trailers")?,
            response_headers: instance.get_typed_func(&mut *store, "proxy_on_response_headers")?,
            done: instance.get_typed_func(&mut *store, "proxy_on_done")?,
            log: instance.get_typed_func(&mut *store, "proxy_on_log")?,
            delete: instance.get_typed_func(&mut *store, "proxy_on_delete")?,
            tick: instance.get_typed_func(&mut *store, "proxy_on_tick")?,
            grpc_receive: instance.get_typed_func(&mut *store, "proxy_on_grpc_receive")?,
            grpc_close: instance.get_typed_func(&mut *store, "proxy_on_grpc_close")?,
        })
    }
}

/// One instance of the module.
pub struct WasmVm {
    store: Store<State>,
    calls: Exports,
    memory: Option<Memory>,
    next_id: u32,
}

impl WasmVm {
    pub fn start(module: &FilterModule, mut state: State) -> Result<Self> {
        state.fuel_trace = std::env::var_os("PORTCULLIS_FUEL_TRACE").map(|_| Vec::new());
        let mut store = Store::new(&module.engine, state);
        store.set_fuel(u64::MAX / 2)?;
        let mut linker: Linker<State> = Linker::new(&module.engine);
        define(&mut linker)?;
        // Host calls the filter never makes trap loudly instead of failing instantiation.
        linker.define_unknown_imports_as_traps(&module.module)?;
        let instance: Instance = linker.instantiate(&mut store, &module.module)?;
        let calls = Exports::find(&instance, &mut store)?;
        let memory = instance.get_memory(&mut store, "memory");
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ())?;
        }
        Ok(Self { store, calls, memory, next_id: 1 })
    }
}

impl Vm for WasmVm {
    fn state(&self) -> &State {
        self.store.data()
    }

    fn state_mut(&mut self) -> &mut State {
        self.store.data_mut()
    }

    fn next_context_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id - 1
    }

    fn call(&mut self, callback: Callback) -> Result<u32> {
        let store = &mut self.store;
        let calls = &self.calls;
        match callback {
            Callback::ContextCreate { id, parent } => calls.context_create.call(store, (id, parent)).map(|()| 0),
            Callback::VmStart { root } => calls.vm_start.call(store, (root, 0)),
            Callback::Configure { root, size } => calls.configure.call(store, (root, size)),
            Callback::RequestHeaders { id, headers, end } => {
                calls.request_headers.call(store, (id, headers, end.into()))
            }
            Callback::RequestBody { id, size, end } => calls.request_body.call(store, (id, size, end.into())),
            Callback::RequestTrailers { id, trailers } => calls.request_trailers.call(store, (id, trailers)),
            Callback::ResponseHeaders { id, headers, end } => {
                calls.response_headers.call(store, (id, headers, end.into()))
            }
            Callback::Done { id } => calls.done.call(store, id),
            Callback::Log { id } => calls.log.call(store, id).map(|()| 0),
            Callback::Delete { id } => calls.delete.call(store, id).map(|()| 0),
            Callback::Tick { root } => calls.tick.call(store, root).map(|()| 0),
            Callback::GrpcReceive { id, token, size } => calls.grpc_receive.call(store, (id, token, size)).map(|()| 0),
            Callback::GrpcClose { id, token, status } => calls.grpc_close.call(store, (id, token, status)).map(|()| 0),
        }
    }

    fn fuel(&self) -> Result<u64> {
        self.store.get_fuel()
    }

    fn memory_bytes(&mut self) -> Option<usize> {
        Some(self.memory?.data_size(&self.store))
    }
}

/// A `(pointer, length)` pair of wasm32 arguments.
fn span(ptr: i32, len: i32) -> (usize, usize) {
    (at(ptr), at(len))
}

fn define(linker: &mut Linker<State>) -> Result<()> {
    type C<'c> = Caller<'c, State>;
    linker.func_wrap("env", "proxy_log", |mut c: C<'_>, level: i32, ptr: i32, len: i32| {
        abi::log(&mut Wasm(&mut c), level as u32, at(ptr), at(len))
    })?;
    linker.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: C<'_>, ptr: i32| {
        abi::get_current_time_nanoseconds(&mut Wasm(&mut c), at(ptr))
    })?;
    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: C<'_>, period: i32| {
        abi::set_tick_period_milliseconds(&mut Wasm(&mut c), period as u32)
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, kind: i32, start: i32, max: i32, data: i32, size: i32| {
            abi::get_buffer_bytes(&mut Wasm(&mut c), kind as u32, at(start), at(max), at(data), at(size))
        },
    )?;
    linker.func_wrap("env", "proxy_get_header_map_pairs", |mut c: C<'_>, map: i32, data: i32, size: i32| {
        abi::get_header_map_pairs(&mut Wasm(&mut c), map as u32, at(data), at(size))
    })?;
    linker.func_wrap("env", "proxy_set_header_map_pairs", |mut c: C<'_>, map: i32, ptr: i32, len: i32| {
        abi::set_header_map_pairs(&mut Wasm(&mut c), map as u32, at(ptr), at(len))
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: C<'_>, map: i32, kptr: i32, klen: i32, data: i32, size: i32| {
            abi::get_header_map_value(&mut Wasm(&mut c), map as u32, span(kptr, klen), at(data), at(size))
        },
    )?;
    for (name, replace) in [("proxy_replace_header_map_value", true), ("proxy_add_header_map_value", false)] {
        linker.func_wrap("env", name, move |mut c: C<'_>, map: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
            abi::put_header_map_value(&mut Wasm(&mut c), map as u32, span(kptr, klen), span(vptr, vlen), replace)
        })?;
    }
    linker.func_wrap("env", "proxy_remove_header_map_value", |mut c: C<'_>, map: i32, kptr: i32, klen: i32| {
        abi::remove_header_map_value(&mut Wasm(&mut c), map as u32, at(kptr), at(klen))
    })?;
    linker.func_wrap("env", "proxy_get_property", |mut c: C<'_>, pptr: i32, plen: i32, data: i32, size: i32| {
        abi::get_property(&mut Wasm(&mut c), at(pptr), at(plen), at(data), at(size))
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, data: i32, size: i32, cas: i32| {
            abi::get_shared_data(&mut Wasm(&mut c), span(kptr, klen), at(data), at(size), at(cas))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| {
            abi::set_shared_data(&mut Wasm(&mut c), span(kptr, klen), span(vptr, vlen), cas as u32)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>, status: i32, _dp: i32, _dl: i32, bptr: i32, blen: i32, hptr: i32, hlen: i32, _grpc: i32| {
            let reply = LocalResponse { status: status as u32, body: span(bptr, blen), headers: span(hptr, hlen) };
            abi::send_local_response(&mut Wasm(&mut c), reply)
        },
    )?;
    linker.func_wrap("env", "proxy_define_metric", |mut c: C<'_>, kind: i32, nptr: i32, nlen: i32, id: i32| {
        abi::define_metric(&mut Wasm(&mut c), kind as u32, span(nptr, nlen), at(id))
    })?;
    linker.func_wrap("env", "proxy_increment_metric", |mut c: C<'_>, id: i32, offset: i64| {
        abi::increment_metric(&mut Wasm(&mut c), id as u32, offset)
    })?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: C<'_>,
         up: i32,
         up_len: i32,
         svc: i32,
         svc_len: i32,
         m: i32,
         m_len: i32,
         md: i32,
         md_len: i32,
         msg: i32,
         msg_len: i32,
         timeout: i32,
         token: i32| {
            let args = abi::GrpcCallArgs {
                upstream: span(up, up_len),
                service: span(svc, svc_len),
                method: span(m, m_len),
                metadata: span(md, md_len),
                message: span(msg, msg_len),
                timeout_ms: timeout as u32,
                token_ptr: at(token),
            };
            abi::grpc_call(&mut Wasm(&mut c), args)
        },
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", |mut c: C<'_>, token: i32| {
        abi::grpc_cancel(&mut Wasm(&mut c), token as u32)
    })?;
    linker.func_wrap("env", "proxy_continue_stream", |mut c: C<'_>, stream: i32| {
        abi::continue_stream(&mut Wasm(&mut c), stream as u32)
    })?;
    linker.func_wrap("env", "proxy_set_effective_context", |mut c: C<'_>, id: i32| {
        abi::set_effective_context(&mut Wasm(&mut c), id as u32)
    })?;

    // WASI: only what a wasm32-wasip1 Rust cdylib links. Output is kept as log lines so a panic
    // message from the filter shows up in the test failure.
    linker.func_wrap("wasi_snapshot_preview1", "environ_sizes_get", |mut c: C<'_>, count: i32, size: i32| {
        let mut g = Wasm(&mut c);
        abi::write_u32(&mut g, at(count), 0)?;
        abi::write_u32(&mut g, at(size), 0)?;
        Ok(0)
    })?;
    linker.func_wrap("wasi_snapshot_preview1", "environ_get", |_: C<'_>, _: i32, _: i32| -> Result<i32> { Ok(0) })?;
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "fd_write",
        |mut c: C<'_>, _fd: i32, iovs: i32, iovs_len: i32, written_ptr: i32| -> Result<i32> {
            let mut g = Wasm(&mut c);
            let mut written = 0u32;
            let mut text = Vec::new();
            for i in 0..iovs_len {
                let iov = g.read(at(iovs + i * 8), 8)?;
                let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                text.extend(g.read(ptr as usize, len as usize)?);
                written += len;
            }
            g.state().logs.push((5, String::from_utf8_lossy(&text).into_owned()));
            abi::write_u32(&mut g, at(written_ptr), written)?;
            Ok(0)
        },
    )?;
    // Real entropy, as Envoy's `random_get` gives: the filter's generated hash key.
    linker.func_wrap("wasi_snapshot_preview1", "random_get", |mut c: C<'_>, buf: i32, len: i32| -> Result<i32> {
        let mut bytes = vec![0; len as usize];
        getrandom::fill(&mut bytes).map_err(|err| format_err!("host entropy: {err}"))?;
        Wasm(&mut c).write(at(buf), &bytes)?;
        Ok(0)
    })?;
    linker.func_wrap("wasi_snapshot_preview1", "proc_exit", |c: C<'_>, code: i32| -> Result<()> {
        bail!("the filter called proc_exit({code}); log: {:?}", c.data().logs)
    })?;
    Ok(())
}
