//! The guest's side of the ABI: the `proxy_on_*` callbacks Envoy calls, handed to the plugin's
//! root contexts (one per plugin sharing the VM) and to the HTTP contexts they create (one per
//! request).
//!
//! Contexts live in vectors sorted by id: the host numbers contexts upwards, so a new one goes
//! at the end and a lookup is a binary search, with no hash seed to ask the host for. A
//! callback for a context this VM does not hold (one whose creation its root declined) does
//! nothing and lets the stream continue; nothing here panics.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use crate::calls;
use crate::types::Action;

/// A plugin's configuration and what it shares between requests.
pub trait RootContext {
    /// The plugin configuration is `configuration_size` bytes (`calls::get_buffer`); `false`
    /// refuses it, and Envoy then fails the plugin.
    fn on_configure(&mut self, configuration_size: usize) -> bool;
    fn on_tick(&mut self) {}
    /// The answer to a gRPC call this context made: `status` 0 and `size` bytes in the receive
    /// buffer, or the call's gRPC status when it failed.
    fn on_grpc_call_response(&mut self, _token: u32, _status: u32, _size: usize) {}
    /// A context for one request; `None` lets the request through untouched.
    fn create_http_context(&self) -> Option<Box<dyn HttpContext>>;
}

/// One request.
pub trait HttpContext {
    fn on_request_headers(&mut self) -> Action;
    fn on_request_body(&mut self) -> Action {
        Action::Continue
    }
    fn on_request_trailers(&mut self) -> Action {
        Action::Continue
    }
    fn on_response_headers(&mut self) -> Action {
        Action::Continue
    }
    /// The stream is over (its access log is being written).
    fn on_log(&mut self) {}
    /// As [`RootContext::on_grpc_call_response`], for a call made while handling this request;
    /// the host's stream calls already point at this request.
    fn on_grpc_call_response(&mut self, _token: u32, _status: u32, _size: usize) {}
}

type NewRoot = fn() -> Box<dyn RootContext>;

/// Contexts of one kind by id, sorted.
type Table<T> = RefCell<Vec<(u32, Box<T>)>>;

/// State of the VM: inside it (one thread, no std) plain statics; natively linked, where tests
/// run the filter on many threads, thread-locals, so that each test thread is a VM of its own.
#[cfg(target_family = "wasm")]
macro_rules! vm_state {
    ($($(#[$doc:meta])* static $name:ident: $type:ty = const { $init:expr };)*) => {
        $($(#[$doc])* static $name: VmState<$type> = VmState($init);)*
    };
}
#[cfg(not(target_family = "wasm"))]
macro_rules! vm_state {
    ($($tokens:tt)*) => { std::thread_local! { $($tokens)* } };
}

/// A static of the VM's, with the `with`/`get`/`set` of a thread-local.
#[cfg(target_family = "wasm")]
struct VmState<T>(T);

// SAFETY: a proxy-wasm VM runs one thread. Built with Wasm threads (`atomics`) `VmState` is
// not `Sync`, so the statics do not compile there rather than race.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl<T> Sync for VmState<T> {}

#[cfg(target_family = "wasm")]
impl<T> VmState<T> {
    fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0)
    }
}

#[cfg(target_family = "wasm")]
impl<T: Copy> VmState<Cell<T>> {
    fn get(&'static self) -> T {
        self.0.get()
    }

    fn set(&'static self, value: T) {
        self.0.set(value);
    }
}

#[cfg(target_family = "wasm")]
type Local<T> = VmState<T>;
#[cfg(not(target_family = "wasm"))]
type Local<T> = std::thread::LocalKey<T>;

vm_state! {
    static NEW_ROOT: Cell<Option<NewRoot>> = const { Cell::new(None) };
    static ROOTS: Table<dyn RootContext> = const { RefCell::new(Vec::new()) };
    static STREAMS: Table<dyn HttpContext> = const { RefCell::new(Vec::new()) };
    /// gRPC calls in flight: token → the context that made the call.
    static CALLS: RefCell<Vec<(u32, u32)>> = const { RefCell::new(Vec::new()) };
    /// The context whose callback is running (a call it makes is answered to it).
    static ACTIVE: Cell<u32> = const { Cell::new(0) };
}

/// Registers how the VM makes its root contexts. Called once, from the module's `_initialize`
/// (see [`crate::main`]). Inside the VM a panic is logged by the crate's panic handler;
/// natively, by a hook logging through [`calls::log`] as well.
pub fn set_root_context(new_root: NewRoot) {
    NEW_ROOT.set(Some(new_root));
    #[cfg(not(target_family = "wasm"))]
    std::panic::set_hook(Box::new(|panic| {
        use std::string::ToString;
        calls::log(crate::types::LogLevel::Critical, &panic.to_string());
    }));
}

/// Defines the module's `_initialize` export, which runs the Wasm module's static constructors
/// and registers `$new_root` as the maker of its root contexts.
#[macro_export]
macro_rules! main {
    ($new_root:expr) => {
        #[cfg(target_os = "wasi")]
        unsafe extern "C" {
            fn __wasm_call_ctors();
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn _initialize() {
            #[cfg(target_os = "wasi")]
            // SAFETY: the host calls `_initialize` once, before any other export.
            unsafe {
                __wasm_call_ctors();
            }
            $crate::set_root_context($new_root);
        }
    };
}

fn position<T>(contexts: &[(u32, T)], id: u32) -> Result<usize, usize> {
    contexts.binary_search_by_key(&id, |(key, _)| *key)
}

fn insert<T>(contexts: &RefCell<Vec<(u32, T)>>, id: u32, context: T) {
    if let Ok(mut contexts) = contexts.try_borrow_mut() {
        match position(&contexts, id) {
            Ok(at) => contexts[at].1 = context,
            Err(at) => contexts.insert(at, (id, context)),
        }
    }
}

/// Runs `callback` on the context `id` of `contexts`; `None` when there is no such context.
fn with<T: ?Sized, R>(contexts: &'static Local<Table<T>>, id: u32, callback: impl FnOnce(&mut T) -> R) -> Option<R> {
    contexts.with(|contexts| {
        let mut contexts = contexts.try_borrow_mut().ok()?;
        let at = position(&contexts, id).ok()?;
        ACTIVE.set(id);
        Some(callback(&mut *contexts[at].1))
    })
}

fn on_stream(id: u32, callback: impl FnOnce(&mut (dyn HttpContext + 'static)) -> Action) -> u32 {
    with(&STREAMS, id, callback).unwrap_or(Action::Continue) as u32
}

/// The context that made the call now running: its answer goes there.
pub(crate) fn await_call(token: u32) {
    CALLS.with(|calls| insert(calls, token, ACTIVE.get()));
}

pub(crate) fn forget_call(token: u32) {
    CALLS.with(|calls| remove(calls, token));
}

/// A call's answer (`status` 0) or failure, to the context that made it. A unary call gets one
/// of the two; a second, or an answer for a context that is gone, is dropped.
fn answer_call(token: u32, status: u32, size: usize) {
    let Some(caller) = CALLS.with(|calls| remove(calls, token)) else { return };
    if calls::set_effective_context(caller).is_err() {
        return;
    }
    let answered = with(&STREAMS, caller, |stream| stream.on_grpc_call_response(token, status, size));
    if answered.is_none() {
        with(&ROOTS, caller, |root| root.on_grpc_call_response(token, status, size));
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host's buffers for the guest: a boxed slice of exactly `size` bytes, which the guest
/// takes back with `Vec::from_raw_parts(data, size, size)` (`calls::take`).
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let buffer: Box<[core::mem::MaybeUninit<u8>]> = Box::new_uninit_slice(size);
    Box::into_raw(buffer).cast()
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id == 0 {
        if let Some(new_root) = NEW_ROOT.get() {
            ROOTS.with(|roots| insert(roots, context_id, new_root()));
        }
        return;
    }
    if let Some(Some(stream)) = with(&ROOTS, root_context_id, |root| root.create_http_context()) {
        STREAMS.with(|streams| insert(streams, context_id, stream));
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_vm_start(_context_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool {
    with(&ROOTS, context_id, |root| root.on_configure(plugin_configuration_size)).unwrap_or(false)
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    with(&ROOTS, context_id, |root| root.on_tick());
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _num_headers: usize, _end_of_stream: bool) -> u32 {
    on_stream(context_id, |stream| stream.on_request_headers())
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_body(context_id: u32, _body_size: usize, _end_of_stream: bool) -> u32 {
    on_stream(context_id, |stream| stream.on_request_body())
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _num_trailers: usize) -> u32 {
    on_stream(context_id, |stream| stream.on_request_trailers())
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_headers(context_id: u32, _num_headers: usize, _end_of_stream: bool) -> u32 {
    on_stream(context_id, |stream| stream.on_response_headers())
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_grpc_receive(_context_id: u32, token: u32, response_size: usize) {
    answer_call(token, 0, response_size);
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_grpc_close(_context_id: u32, token: u32, status_code: u32) {
    answer_call(token, status_code, 0);
}

/// `true`: the context is done at once (nothing here finishes asynchronously).
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_done(_context_id: u32) -> bool {
    true
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_log(context_id: u32) {
    with(&STREAMS, context_id, |stream| stream.on_log());
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    // Each context is dropped after its vector's borrow ends.
    if STREAMS.with(|streams| remove(streams, context_id)).is_none() {
        ROOTS.with(|roots| remove(roots, context_id));
    }
    // A call whose caller is gone has no one to answer to.
    CALLS.with(|calls| {
        if let Ok(mut calls) = calls.try_borrow_mut() {
            calls.retain(|(_, caller)| *caller != context_id);
        }
    });
}

/// Takes the entry `id` out of `entries`; a context comes back to be dropped after the borrow.
fn remove<T>(entries: &RefCell<Vec<(u32, T)>>, id: u32) -> Option<T> {
    let mut entries = entries.try_borrow_mut().ok()?;
    let at = position(&entries, id).ok()?;
    Some(entries.remove(at).1)
}
